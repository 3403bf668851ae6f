//! CPU spent per command during the commands mode's load, and by whom: the whole machine,
//! the server, PostgreSQL (every `postgres` process on this machine, split into the store's
//! writer session, the projections' leading sessions and the rest) and the bench's client.
//! Under load this 2-core machine stays about 87% busy whatever is changed, so commands/s
//! is the busy CPU divided by what a command costs; the split says where that cost is, and
//! whether a change saved work or only moved a wait. Read from `/proc` (Linux); elsewhere
//! nothing is printed.

use std::collections::HashMap;

/// Where the server and the client run.
#[derive(Clone, Copy)]
pub enum Server {
    /// Both in this process: the client's threads are named `bench-…`.
    ThisProcess,
    /// The server in a process of its own (`--server-process`), the client in this one.
    Process(u32),
    /// The server started apart (`--url`), perhaps on another machine.
    Elsewhere,
}

/// What the counters read at one moment, in CPU seconds since each one started.
pub struct Sample {
    /// Busy and total time of the machine, over all cores.
    machine: Option<(f64, f64)>,
    server: Option<f64>,
    client: f64,
    /// Each `postgres` process's time, by pid.
    postgres: HashMap<u32, f64>,
}

/// CPU seconds spent between two samples.
pub struct Spent {
    /// All cores' busy time: the server, PostgreSQL, the client, the kernel.
    pub machine: Option<f64>,
    /// The share of the machine's time that was busy.
    pub busy_share: Option<f64>,
    pub server: Option<f64>,
    pub postgres: f64,
    /// PostgreSQL's time by backend pid.
    postgres_by_pid: HashMap<u32, f64>,
    /// Which backends served the writer and the projections.
    roles: Roles,
    pub client: f64,
}

/// The server's PostgreSQL sessions whose backends' time is told apart: the store's writer
/// (`application_name` [`universal_backend::store::WRITER_APPLICATION_NAME`]) and the
/// sessions that lead the projections (they hold the projections' advisory locks).
#[derive(Default, Clone)]
pub struct Roles {
    pub writer: Vec<u32>,
    pub projections: Vec<u32>,
}

impl Roles {
    /// Reads the roles from the server's sessions on `pool`'s database; none when that fails
    /// (then PostgreSQL's time is printed whole).
    pub async fn read(pool: &sqlx::PgPool) -> Self {
        let read = async {
            let writer: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
            )
            .bind(universal_backend::store::WRITER_APPLICATION_NAME)
            .fetch_all(pool)
            .await?;
            let leads = universal_backend::projections::runner::leads(pool).await?;
            anyhow::Ok(Self {
                writer: writer.into_iter().map(|p| p as u32).collect(),
                projections: leads
                    .into_iter()
                    .filter_map(|(_, lead)| lead.map(|(_, pid)| pid as u32))
                    .collect(),
            })
        };
        read.await.unwrap_or_default()
    }
}

/// `/proc` counts in clock ticks of this many per second (`USER_HZ`, fixed at 100 for user
/// space on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds of this process so far: the server's part (every thread but the bench's
/// own) and the bench's threads (`bench-…`: the client's and the provider's).
pub fn this_process() -> (f64, f64) {
    let bench = bench_thread_ticks();
    (
        (read_ticks("/proc/self/stat") - bench) / TICKS,
        bench / TICKS,
    )
}

impl Sample {
    pub fn take(server: Server) -> Self {
        let (ours, bench) = this_process();
        let (server, client) = match server {
            Server::ThisProcess => (Some(ours), bench),
            Server::Process(pid) => (
                Some(read_ticks(&format!("/proc/{pid}/stat")) / TICKS),
                ours + bench,
            ),
            Server::Elsewhere => (None, ours + bench),
        };
        Self {
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| machine_ticks(&s)),
            server,
            client,
            postgres: postgres_ticks(),
        }
    }

    pub fn since(&self, before: &Sample, roles: Roles) -> Spent {
        let machine = self
            .machine
            .zip(before.machine)
            .map(|((busy, total), (busy0, total0))| (busy - busy0, total - total0));
        // A backend that started during the load counts from nothing; one that ended is
        // missed (none does while the load runs).
        let postgres_by_pid: HashMap<u32, f64> = self
            .postgres
            .iter()
            .map(|(pid, t)| {
                let spent = t - before.postgres.get(pid).copied().unwrap_or(0.0);
                (*pid, spent / TICKS)
            })
            .collect();
        let postgres = postgres_by_pid.values().sum::<f64>();
        Spent {
            machine: machine.map(|(busy, _)| busy),
            busy_share: machine.and_then(|(busy, total)| (total > 0.0).then(|| busy / total)),
            server: self.server.zip(before.server).map(|(a, b)| a - b),
            postgres,
            postgres_by_pid,
            roles,
            client: self.client - before.client,
        }
    }
}

impl Spent {
    /// Prints the CPU per command of `commands` commands.
    pub fn print(&self, commands: usize) {
        let Some(machine) = self.machine.filter(|_| commands > 0) else {
            return;
        };
        let per = |secs: f64| secs * 1e6 / commands as f64;
        let server = self.server.unwrap_or(0.0);
        let mut line = format!(
            "CPU per command: machine {:.0} µs ({:.0}% of its cores busy): ",
            per(machine),
            self.busy_share.unwrap_or(0.0) * 100.0
        );
        if self.server.is_some() {
            line.push_str(&format!("server {:.0}, ", per(server)));
        }
        line.push_str(&format!("PostgreSQL {:.0}", per(self.postgres)));
        if let Some((writer, projections)) = self.postgres_split() {
            line.push_str(&format!(
                " (writer {:.0}, projections {:.0}, other sessions and PostgreSQL's own \
                 processes {:.0})",
                per(writer),
                per(projections),
                per(self.postgres - writer - projections)
            ));
        }
        line.push_str(&format!(
            ", client {:.0}, the rest (the kernel's other work, other processes) {:.0} µs",
            per(self.client),
            per(machine - server - self.postgres - self.client)
        ));
        println!("{line}");
    }

    /// PostgreSQL's time in the writer's backend and in the projections' leading
    /// backends; `None` when the writer's backend is not known.
    fn postgres_split(&self) -> Option<(f64, f64)> {
        let of = |pids: &[u32]| -> f64 {
            pids.iter()
                .filter_map(|pid| self.postgres_by_pid.get(pid))
                .sum()
        };
        (!self.roles.writer.is_empty())
            .then(|| (of(&self.roles.writer), of(&self.roles.projections)))
    }
}

/// Busy and total seconds from the first line of `/proc/stat`: user, nice, system, idle,
/// iowait, irq, softirq, steal (guest time is already within user).
fn machine_ticks(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 8 {
        return None;
    }
    let idle = f[3] + f[4];
    let total: f64 = f.iter().sum();
    Some(((total - idle) / TICKS, total / TICKS))
}

/// utime + stime of a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` line, in ticks.
fn process_ticks(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces): utime is the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    t(11) + t(12)
}

fn read_ticks(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .map(|s| process_ticks(&s))
        .unwrap_or(0.0)
}

/// The ticks of the bench's own threads in this process.
fn bench_thread_ticks() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("bench-"))
        })
        .map(|task| read_ticks(&task.path().join("stat").to_string_lossy()))
        .sum()
}

/// The ticks of every `postgres` process on this machine, by pid.
fn postgres_ticks() -> HashMap<u32, f64> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
            (comm.trim_end() == "postgres")
                .then(|| (pid, read_ticks(&p.path().join("stat").to_string_lossy())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_counts_everything_but_idle_and_iowait_as_busy() {
        let (busy, total) =
            machine_ticks("cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n").unwrap();
        assert_eq!((busy, total), (1.6, 10.0));
        assert!(machine_ticks("intr 1 2 3").is_none());
    }

    #[test]
    fn a_process_counts_its_user_and_system_ticks() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        assert_eq!(process_ticks(stat), 280.0);
    }

    /// A sample of PostgreSQL's backends alone: (pid, ticks).
    fn sample(postgres: &[(u32, f64)]) -> Sample {
        Sample {
            machine: Some((0.0, 0.0)),
            server: None,
            client: 0.0,
            postgres: postgres.iter().copied().collect(),
        }
    }

    #[test]
    fn postgres_counts_new_backends_from_nothing() {
        let spent =
            sample(&[(1, 300.0), (2, 50.0)]).since(&sample(&[(1, 100.0)]), Roles::default());
        assert_eq!(spent.postgres, 2.5);
        assert_eq!(spent.postgres_split(), None);
    }

    #[test]
    fn postgres_splits_into_the_writer_the_projections_and_the_rest() {
        let roles = Roles {
            writer: vec![7],
            projections: vec![8, 9],
        };
        let spent = sample(&[(7, 400.0), (8, 100.0), (9, 50.0), (10, 30.0)])
            .since(&sample(&[(7, 100.0), (8, 50.0)]), roles);
        assert_eq!(spent.postgres, 4.3);
        assert_eq!(spent.postgres_split(), Some((3.0, 1.0)));
    }
}
