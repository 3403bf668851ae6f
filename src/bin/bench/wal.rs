//! What PostgreSQL's write-ahead log did during the commands mode's load: how many bytes it
//! took per command, and how many segment files it had to add. A segment that is not
//! recycled from an earlier checkpoint is created and zero-filled (16 MiB, `wal_init_zero`)
//! by the session that first needs it, and every commit waits behind that write: on a
//! freshly started cluster this shows as a tail of tens of milliseconds that has nothing to
//! do with the server. Reading the figures needs the right to list `pg_wal` (a superuser or
//! `pg_monitor`); without it nothing is printed.

use sqlx::PgPool;

/// The log's position and its directory's file count at one moment.
#[derive(Clone, Copy)]
pub struct Mark {
    lsn: i64,
    files: i64,
}

impl Mark {
    pub async fn take(pool: &PgPool) -> Option<Self> {
        let (lsn, files): (i64, i64) = sqlx::query_as(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, \
             (SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$')",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        Some(Self { lsn, files })
    }

    /// What was written from `before` to this mark.
    pub fn since(self, before: Self) -> Spent {
        Spent {
            bytes: (self.lsn - before.lsn).max(0),
            added: (self.files - before.files).max(0),
        }
    }
}

/// The log written between two marks.
pub struct Spent {
    pub bytes: i64,
    /// Segment files the directory gained: created, not recycled.
    pub added: i64,
}

impl Spent {
    /// The line printed after the CPU split, for `commands` commands.
    pub fn line(&self, commands: usize) -> String {
        let per = self.bytes as f64 / commands.max(1) as f64;
        let mut line = format!(
            "WAL: {:.0} MiB, {:.2} KiB per command",
            self.bytes as f64 / 1048576.0,
            per / 1024.0
        );
        if self.added > 0 {
            line.push_str(&format!(
                "; PostgreSQL created {} new segment files during the load (commits wait \
                 while each is zero-filled: see docs/benchmarks.md, \"WAL segments\")",
                self.added
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_without_new_segments_prints_the_bytes_per_command_only() {
        let before = Mark {
            lsn: 1 << 30,
            files: 40,
        };
        let after = Mark {
            lsn: (1 << 30) + 3 * 1048576,
            files: 40,
        };
        assert_eq!(
            after.since(before).line(2048),
            "WAL: 3 MiB, 1.50 KiB per command"
        );
    }

    #[test]
    fn new_segment_files_are_named_with_where_to_read_about_them() {
        let before = Mark { lsn: 0, files: 23 };
        let after = Mark {
            lsn: 320 * 1048576,
            files: 44,
        };
        let line = after.since(before).line(230_000);
        assert!(line.starts_with("WAL: 320 MiB, 1.42 KiB per command; "));
        assert!(line.contains("created 21 new segment files"));
    }
}
