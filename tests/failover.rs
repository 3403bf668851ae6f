//! The database survives losing its connections and its primary (docs/operations.md, "High
//! availability"): host selection over a multi-host `DATABASE_URL`, and every part of the
//! server (pools, the store writer, listeners, projection locks, live subscriptions)
//! coming back by itself, with every acknowledged write in the log.
//!
//! The primary/standby tests run their own two small PostgreSQL clusters (initdb +
//! pg_basebackup, synchronous replication) on free loopback ports in a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_tungstenite::tungstenite::Message;
use universal_backend::db::{self, primary, DatabaseUrl};

use common::{recv, Socket};

// ---------------------------------------------------------------------------------------
// Helpers

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb")
}

/// Runs a PostgreSQL tool as the `postgres` user when the test runs as root.
fn pg(tool: &str, args: &[&str]) {
    let bin = bindir().join(tool);
    let root = std::env::var("USER").as_deref() == Ok("root")
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
    let out = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&bin)
            .args(args)
            .output()
    } else {
        Command::new(&bin).args(args).output()
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A primary and a synchronous standby of it, stopped and removed on drop.
struct Pair {
    dir: PathBuf,
    primary: u16,
    standby: u16,
}

impl Pair {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ub-failover-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let (primary, standby) = (free_port(), free_port());
        let p = dir.join("primary");
        let s = dir.join("standby");
        pg(
            "initdb",
            &[
                "-D",
                p.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let pair = Pair {
            dir,
            primary,
            standby,
        };
        // Every commit waits for the standby: what was acknowledged survives the primary.
        pair.pg_ctl_start(&p, primary, "-c synchronous_standby_names=*");
        pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.to_string(),
                "-U",
                "postgres",
                "-D",
                s.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        pair.pg_ctl_start(&s, standby, "");
        pair
    }

    fn pg_ctl_start(&self, data: &Path, port: u16, extra: &str) {
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=100 {extra}",
            self.dir.display()
        );
        let log = self.dir.join(format!("{port}.log"));
        pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    fn stop_primary_immediately(&self) {
        pg(
            "pg_ctl",
            &[
                "-D",
                self.dir.join("primary").to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn promote_standby(&self) {
        pg(
            "pg_ctl",
            &[
                "-D",
                self.dir.join("standby").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "promote",
            ],
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in ["primary", "standby"] {
            let data = self.dir.join(d);
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bindir().join("pg_ctl"))
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn subscribe(base: &str, token: &str, building: &str) -> Socket {
    let url = format!("{}/api/v1/ws?token={token}", base.replace("http", "ws"));
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let sub = json!({ "type": "subscribe", "id": "b", "target": { "stream": format!("building-{building}") }, "from": 0 });
    ws.send(Message::Text(sub.to_string())).await.unwrap();
    ws
}

/// Reads the subscription until the event of `version` has arrived; the versions must come
/// one after the other, without gap or repeat.
async fn read_until(ws: &mut Socket, next: &mut i64, version: i64) {
    while *next <= version {
        let m = recv(ws).await;
        match m["type"].as_str() {
            Some("event") => {
                assert_eq!(m["version"].as_i64(), Some(*next), "{m}");
                *next += 1;
            }
            Some("caught_up" | "subscribed") => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
}

/// Posts readings through `base` until `count` were acknowledged (at most `tries` posts);
/// returns the acknowledged log positions and how many posts failed.
async fn write(
    client: &reqwest::Client,
    base: &str,
    building: &str,
    sensor: &str,
    count: usize,
    tries: usize,
) -> (Vec<i64>, usize) {
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..tries {
        if acked.len() == count {
            break;
        }
        let res = client
            .post(format!(
                "{base}/api/v1/citypulse/buildings/{building}/readings"
            ))
            .json(&json!({ "readings": [{ "sensor_id": sensor, "value": i as f64 }] }))
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 201 => {
                let body: Value = r.json().await.unwrap();
                acked.push(body["position"].as_i64().expect("a position"));
            }
            Ok(r) => {
                // While the process moves: 503 and nothing written, never a success.
                assert!(r.status().is_server_error(), "{}", r.status());
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(
        acked.len(),
        count,
        "writes did not resume ({failed} failed)"
    );
    (acked, failed)
}

/// Every acknowledged position holds a reading of the building.
async fn assert_in_log(conn: &mut PgConnection, building: &str, acked: &[i64]) {
    let found: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE stream_id = $1 AND global_position = ANY($2) \
         ORDER BY global_position",
    )
    .bind(format!("building-{building}"))
    .bind(acked)
    .fetch_all(conn)
    .await
    .unwrap();
    let mut want = acked.to_vec();
    want.sort();
    assert_eq!(found, want, "acknowledged writes missing from the log");
}

/// The stream's last version.
async fn stream_version(conn: &mut PgConnection, building: &str) -> i64 {
    sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
        .bind(format!("building-{building}"))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The projections reach `position` (the energy view waits for them, at most 5 s per call).
async fn projections_reach(app: &common::TestApp, building: &str, position: i64) {
    for _ in 0..10 {
        let res = app
            .client
            .get(app.url(&format!(
                "/api/v1/citypulse/buildings/{building}/energy?min_position={position}"
            )))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            return;
        }
    }
    panic!("the projections did not reach {position}");
}

// ---------------------------------------------------------------------------------------
// Tests

#[actix_web::test]
async fn host_selection_skips_a_dead_host_and_a_standby_and_honours_the_target() {
    let pair = Pair::start();
    let dead = free_port();
    let hosts = format!(
        "127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}",
        pair.standby, pair.primary
    );
    let session = |o: sqlx::postgres::PgConnectOptions| o;
    let limit = Duration::from_secs(3);

    let url = DatabaseUrl::parse(&format!(
        "postgres://postgres@{hosts}/postgres?target_session_attrs=read-write"
    ))
    .unwrap();
    let (at, mut conn) = primary::select(&url, limit, &session).await.unwrap();
    assert_eq!(at, 2);
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(port as u16, pair.primary);

    let url = DatabaseUrl::parse(&format!(
        "postgres://postgres@{hosts}/postgres?target_session_attrs=standby"
    ))
    .unwrap();
    assert_eq!(primary::select(&url, limit, &session).await.unwrap().0, 1);
    // libpq's default: the first that answers.
    let url = DatabaseUrl::parse(&format!("postgres://postgres@{hosts}/postgres")).unwrap();
    assert_eq!(primary::select(&url, limit, &session).await.unwrap().0, 1);

    // None fits: the reason names every host.
    let url = DatabaseUrl::parse(&format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{}/postgres?target_session_attrs=primary",
        pair.standby
    ))
    .unwrap();
    let err = primary::select(&url, limit, &session)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{dead}")) && err.contains("standby"),
        "{err}"
    );

    // The server opens (creates and migrates) the database on the primary only.
    let config = common::test_config(format!(
        "postgres://postgres@{hosts}/ub_selected?target_session_attrs=read-write"
    ));
    let pool = db::connect_and_migrate(&config).await.unwrap();
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(port as u16, pair.primary);
    pool.close().await;
}

#[actix_web::test]
async fn every_part_of_two_processes_comes_back_after_all_their_connections_are_killed() {
    let app = common::spawn_app().await;
    let other = common::spawn_second_app(&app).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut ws = subscribe(&other.base, &app.tenant.access_token, &building).await;
    let mut next = 1;
    let (mut acked, _) = write(&app.client, &app.base, &building, &sensor, 5, 5).await;
    let mut admin = PgConnection::connect(&app.database_url).await.unwrap();
    read_until(
        &mut ws,
        &mut next,
        stream_version(&mut admin, &building).await,
    )
    .await;

    // Every connection of both processes to their database, at once: pools, writers,
    // listeners, the projection lock holders.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) k",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 4, "killed {killed}");

    // Writes resume through both processes, with nothing acknowledged lost.
    let (a, _) = write(&app.client, &app.base, &building, &sensor, 5, 100).await;
    let (b, _) = write(&app.client, &other.base, &building, &sensor, 5, 100).await;
    acked.extend(a.iter().chain(&b));
    assert_in_log(&mut admin, &building, &acked).await;
    // The other process's live subscription goes on, without gap or repeat.
    read_until(
        &mut ws,
        &mut next,
        stream_version(&mut admin, &building).await,
    )
    .await;
    // The projections took their locks again and caught up.
    projections_reach(&app, &building, *acked.iter().max().unwrap()).await;
    let lockers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND a.datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(lockers > 0, "no projection holds its lock again");
}

#[actix_web::test]
async fn a_process_moves_to_the_promoted_standby_and_loses_no_acknowledged_write() {
    let pair = Pair::start();
    let dead = free_port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}/ub_failover?target_session_attrs=read-write",
        pair.standby, pair.primary
    );
    let app = common::spawn_app_with(|c| {
        c.database_url = url.clone();
        c.db_primary_check_ms = 200;
        c.db_connect_timeout_secs = 1;
    })
    .await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut ws = subscribe(&app.base, &app.tenant.access_token, &building).await;
    let mut next = 1;
    let (mut acked, _) = write(&app.client, &app.base, &building, &sensor, 10, 10).await;
    let epoch = db::epoch();

    pair.stop_primary_immediately();
    pair.promote_standby();

    // The process finds the new primary by itself; writes resume, the log holds every
    // acknowledged one, the subscription and the projections carry on.
    let (after, _) = write(&app.client, &app.base, &building, &sensor, 10, 300).await;
    acked.extend(after);
    assert!(db::epoch() > epoch, "the pool did not move");
    let mut admin = PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/ub_failover",
        pair.standby
    ))
    .await
    .unwrap();
    assert_in_log(&mut admin, &building, &acked).await;
    read_until(
        &mut ws,
        &mut next,
        stream_version(&mut admin, &building).await,
    )
    .await;
    projections_reach(&app, &building, *acked.iter().max().unwrap()).await;
    app.handle.stop(false).await;
    // The app's listeners (kept alive by its state) may hold pool connections: closing
    // waits for them only briefly; the pair's servers are stopped at once when dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), app.pool.close()).await;
}
