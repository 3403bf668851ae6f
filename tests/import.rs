//! Legacy imports end to end: a second PostgreSQL database made from the legacy schema and
//! filled by the test, imported, then used through the frontends' own routes.

mod common;

use std::path::PathBuf;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use serde_json::{json, Value};
use sqlx::PgPool;
use universal_backend::import::{self, ImportArgs, Source};
use uuid::Uuid;

const OLD_PASSWORD: &str = "the old password 1";

/// A new legacy database of `schema` (one of `src/import/legacy/*.sql`).
async fn legacy_database(schema: &str) -> (PgPool, String) {
    let url = format!("{}/ub_legacy_{}", server_url(), Uuid::new_v4().simple());
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(schema).execute(&pool).await.unwrap();
    (pool, url)
}

/// The import's settings beside a running server: the server runs the projections.
fn import_config(app: &TestApp) -> universal_backend::Config {
    let mut config = test_config(app.database_url.clone());
    config.run_projections = false;
    config
}

fn args(source: Source, from: &str, report: &std::path::Path) -> ImportArgs {
    ImportArgs {
        source,
        from: from.to_owned(),
        dry_run: false,
        verify_only: false,
        report: Some(report.to_path_buf()),
        organization: None,
        assign_orphans_to: None,
        users_from: None,
    }
}

fn report_path() -> PathBuf {
    std::env::temp_dir().join(format!("ub-import-{}.json", Uuid::new_v4().simple()))
}

fn read_report(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("no figures for {name} in {report}"))
}

fn skipped(report: &Value, table: &str, legacy_id: &str) -> Option<String> {
    report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["table"] == table && s["legacy_id"] == legacy_id)
        .map(|s| s["reason"].as_str().unwrap().to_owned())
}

struct Flowmind {
    ada: Uuid,
    org: Uuid,
    building: Uuid,
    orphan_building: Uuid,
    orphan_sensor: Uuid,
    meter: Uuid,
    huge_reading: i64,
    ancient_reading: i64,
    session: Uuid,
    reply: Uuid,
    done_task: Uuid,
    running_task: Uuid,
    twin: Uuid,
    bob: Uuid,
}

/// A small FlowMind database with one of each kind of row, and the hostile ones.
async fn fill_flowmind(src: &PgPool) -> Flowmind {
    let org = Uuid::new_v4();
    let (ada, bob, twin, google) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let t0 = Utc.with_ymd_and_hms(2024, 3, 1, 8, 0, 0).unwrap();
    // Cost 4 and cost 5 hashes, `$2b$` and `$2a$`: any cost and prefix is accepted.
    let ada_hash = bcrypt::hash(OLD_PASSWORD, 4).unwrap();
    let bob_hash = bcrypt::hash(OLD_PASSWORD, 5)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    sqlx::query("INSERT INTO organizations (id, name, features, created_at) VALUES ($1, 'Stadtwerke', $2, $3)")
        .bind(org)
        .bind(json!({"citypulse": true, "flowmind": true, "quantum": true, "velocity": true, "unknown": true}))
        .bind(t0)
        .execute(src)
        .await
        .unwrap();
    for (id, email, hash, name, at) in [
        (ada, "Ada@Example.org", Some(ada_hash), "Ada Lovelace", t0),
        (
            bob,
            "bob@example.org",
            Some(bob_hash),
            "Bob",
            t0 + Duration::minutes(1),
        ),
        // Differs from Ada's only in case: the first one wins.
        (
            twin,
            "ada@example.ORG",
            None,
            "Ada's twin",
            t0 + Duration::minutes(2),
        ),
        // Signed in with Google only: no password.
        (
            google,
            "gina@example.org",
            None,
            "Gina",
            t0 + Duration::minutes(3),
        ),
    ] {
        sqlx::query(
            "INSERT INTO auth.users (id, email, encrypted_password, raw_user_meta_data, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(email)
        .bind(hash)
        .bind(json!({"full_name": name}))
        .bind(at)
        .execute(src)
        .await
        .unwrap();
    }
    for (id, role) in [(ada, "admin"), (bob, "viewer"), (google, "member")] {
        sqlx::query("INSERT INTO user_profiles (id, organization_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(org)
            .bind(role)
            .bind(t0)
            .execute(src)
            .await
            .unwrap();
    }
    let (building, orphan_building) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO buildings (id, user_id, name, address, floor_area, created_at) VALUES ($1, $2, 'Rathaus', 'Marktplatz 1', 1200.5, $3), ($4, NULL, 'Old depot', NULL, NULL, $3)")
        .bind(building)
        .bind(ada)
        .bind(t0)
        .bind(orphan_building)
        .execute(src)
        .await
        .unwrap();
    let (meter, gas, orphan_sensor) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO sensors (id, building_id, name, type, unit, status) VALUES ($1, $2, 'Main meter', 'electricity', 'kWh', 'active'), ($3, $2, 'Boiler', 'gas', 'm3', 'inactive'), ($4, $5, 'Depot meter', 'electricity', 'kWh', NULL)")
        .bind(meter)
        .bind(building)
        .bind(gas)
        .bind(orphan_sensor)
        .bind(orphan_building)
        .execute(src)
        .await
        .unwrap();
    for h in 0..48 {
        sqlx::query(
            "INSERT INTO energy_readings (sensor_id, \"timestamp\", value) VALUES ($1, $2, $3)",
        )
        .bind(meter)
        .bind(t0 + Duration::hours(h))
        .bind(10.0 + h as f64 * 0.5)
        .execute(src)
        .await
        .unwrap();
    }
    for h in 0..5 {
        sqlx::query(
            "INSERT INTO energy_readings (sensor_id, \"timestamp\", value) VALUES ($1, $2, 2.25)",
        )
        .bind(gas)
        .bind(t0 + Duration::hours(h))
        .execute(src)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO energy_readings (sensor_id, \"timestamp\", value) VALUES ($1, $2, 5)")
        .bind(orphan_sensor)
        .bind(t0)
        .execute(src)
        .await
        .unwrap();
    let huge_reading: i64 = sqlx::query_scalar("INSERT INTO energy_readings (sensor_id, \"timestamp\", value) VALUES ($1, $2, 1e308) RETURNING id")
        .bind(meter)
        .bind(t0 + Duration::minutes(30))
        .fetch_one(src)
        .await
        .unwrap();
    let ancient_reading: i64 = sqlx::query_scalar("INSERT INTO energy_readings (sensor_id, \"timestamp\", value) VALUES ($1, '1500-06-01T00:00:00Z', 1) RETURNING id")
        .bind(meter)
        .fetch_one(src)
        .await
        .unwrap();
    let session = Uuid::new_v4();
    sqlx::query("INSERT INTO old_chat_sessions (id, user_id, title, model_id, created_at) VALUES ($1, $2, 'Energy questions', 'gpt-4o-mini', $3)")
        .bind(session)
        .bind(ada)
        .bind(t0)
        .execute(src)
        .await
        .unwrap();
    let reply = Uuid::new_v4();
    for (i, (id, role, content)) in [
        (Uuid::new_v4(), "system", "You answer about energy."),
        (Uuid::new_v4(), "user", "How much did the town hall use?"),
        (reply, "assistant", "About 1,200 kWh last week."),
        (Uuid::new_v4(), "user", "Thanks!"),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query("INSERT INTO old_chat_messages (id, session_id, role, content, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(session)
            .bind(role)
            .bind(content)
            .bind(t0 + Duration::seconds(i as i64))
            .execute(src)
            .await
            .unwrap();
    }
    let (done_task, running_task, bad_task) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, kind, config, status, result) in [
        (
            done_task,
            "quantum",
            json!({"dimensions": 2, "particles": 20, "iterations": 50, "seed": 7}),
            "completed",
            Some(
                json!({"best_position": [0.01, -0.02], "best_cost": 0.0005, "iterations": 50, "evaluations": 1000}),
            ),
        ),
        (
            running_task,
            "velocity",
            json!({"subtasks": [{"kind": "prompt", "prompt": "hello"}]}),
            "running",
            None,
        ),
        (
            bad_task,
            "quantum",
            json!({"dimensions": "two"}),
            "completed",
            None,
        ),
    ] {
        sqlx::query("INSERT INTO old_swarm_tasks (id, user_id, type, objective, config, status, result, created_at) VALUES ($1, $2, $3, 'sphere', $4, $5, $6, $7)")
            .bind(id)
            .bind(ada)
            .bind(kind)
            .bind(config)
            .bind(status)
            .bind(result)
            .bind(t0)
            .execute(src)
            .await
            .unwrap();
    }
    Flowmind {
        ada,
        org,
        building,
        orphan_building,
        orphan_sensor,
        meter,
        huge_reading,
        ancient_reading,
        session,
        reply,
        done_task,
        running_task,
        twin,
        bob,
    }
}

async fn data_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_category <> 'import'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_flowmind_database_comes_in_as_events_and_its_users_log_in_with_their_old_passwords() {
    let app = spawn_app().await;
    let (src, src_url) = legacy_database(include_str!("../src/import/legacy/flowmind.sql")).await;
    let f = fill_flowmind(&src).await;
    let config = import_config(&app);
    let path = report_path();

    assert!(
        import::run(&config, args(Source::Flowmind, &src_url, &path))
            .await
            .unwrap()
    );
    let report = read_report(&path);
    assert_eq!(report["verified"], true, "{report}");
    let users = table(&report, "auth.users");
    assert_eq!(
        (users["read"].as_u64(), users["imported"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(
        skipped(&report, "auth.users", &f.twin.to_string()).as_deref(),
        Some("duplicate")
    );
    assert_eq!(
        skipped(&report, "buildings", &f.orphan_building.to_string()).as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "sensors", &f.orphan_sensor.to_string()).as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "energy_readings", &f.huge_reading.to_string()).as_deref(),
        Some("invalid")
    );
    assert_eq!(
        skipped(&report, "energy_readings", &f.ancient_reading.to_string()).as_deref(),
        Some("invalid")
    );
    let readings = table(&report, "energy_readings");
    assert_eq!(readings["read"], 56);
    assert_eq!(readings["imported"], 53);
    assert!(report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["mismatched"] == 0));
    // Where every event came from, in its metadata.
    let meta: Value =
        sqlx::query_scalar("SELECT metadata FROM events WHERE stream_id = $1 AND version = 1")
            .bind(format!("building-{}", f.building))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(meta["imported_from"]["table"], "buildings");
    assert_eq!(meta["imported_from"]["legacy_id"], f.building.to_string());
    assert_eq!(meta["organization_id"], f.org.to_string());
    // No hash is logged or reported.
    assert!(!std::fs::read_to_string(&path).unwrap().contains("$2"));

    // Ada logs in with her old password, over the frontend's own path.
    let anon = reqwest::Client::new();
    let login = |email: &'static str| {
        let anon = anon.clone();
        let url = app.url("/api/v1/auth/login");
        async move {
            anon.post(url)
                .json(&json!({"email": email, "password": OLD_PASSWORD}))
                .send()
                .await
                .unwrap()
        }
    };
    let res = login("ada@example.org").await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    // The bcrypt hash was replaced with argon2id, as an event; the password still works.
    let rehashed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'PasswordRehashed'",
    )
    .bind(format!("user-{}", f.ada))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rehashed, 1);
    assert_eq!(login("ada@example.org").await.status(), 200);
    assert_eq!(login("bob@example.org").await.status(), 200);
    // Gina had no password: none was invented.
    assert_eq!(login("gina@example.org").await.status(), 401);

    // Her data, through the frontends' routes.
    let token = tokens["access_token"].as_str().unwrap();
    let flowmind = frontend_client(token, "flowmind");
    let sessions: Value = flowmind
        .get(app.url("/api/v1/ai/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        sessions.to_string().contains(&f.session.to_string()),
        "{sessions}"
    );
    let session: Value = flowmind
        .get(app.url(&format!("/api/v1/ai/sessions/{}", f.session)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["system_prompt"], "You answer about energy.");
    let messages: Value = flowmind
        .get(app.url(&format!("/api/v1/ai/sessions/{}/messages", f.session)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = messages.to_string();
    assert!(text.contains("About 1,200 kWh last week."), "{text}");
    assert!(text.contains("How much did the town hall use?"), "{text}");
    let citypulse = frontend_client(token, "citypulse");
    let energy: Value = citypulse
        .get(app.url(&format!(
            "/api/v1/citypulse/buildings/{}/energy?from=2024-03-01T00:00:00Z&to=2024-03-04T00:00:00Z&bucket=day",
            f.building
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        energy.to_string().contains(&f.meter.to_string()),
        "{energy}"
    );
    let quantum = frontend_client(token, "quantum");
    let done: Value = quantum
        .get(app.url(&format!("/api/v1/swarm/tasks/{}", f.done_task)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let velocity = frontend_client(token, "velocity");
    let running: Value = velocity
        .get(app.url(&format!("/api/v1/swarm/tasks/{}", f.running_task)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(running["status"], "failed", "{running}");
    assert!(running.to_string().contains("interrupted"), "{running}");

    // A second run writes no data event, only its run record.
    let before = data_events(&app.pool).await;
    let again = report_path();
    assert!(
        import::run(&config, args(Source::Flowmind, &src_url, &again))
            .await
            .unwrap()
    );
    let report = read_report(&again);
    assert_eq!(report["events_written"], 0, "{report}");
    assert_eq!(data_events(&app.pool).await, before + 1 - 1);
    assert_eq!(table(&report, "energy_readings")["unchanged"], 53);
    assert_eq!(table(&report, "user_profiles")["unchanged"], 3, "{report}");
    assert_eq!(
        table(&report, "old_chat_messages")["imported"],
        0,
        "{report}"
    );

    // The run records, listed for operators.
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'ImportCompleted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(runs, 2);

    // Verification catches a read model that no longer says what the source says.
    sqlx::query("UPDATE chat_messages SET content = 'tampered' WHERE id = $1")
        .bind(f.reply)
        .execute(&app.pool)
        .await
        .unwrap();
    let verify = report_path();
    let mut a = args(Source::Flowmind, &src_url, &verify);
    a.verify_only = true;
    assert!(!import::run(&config, a).await.unwrap());
    let report = read_report(&verify);
    let differences = report["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{report}");
    assert_eq!(differences[0]["legacy_id"], f.reply.to_string());
    assert_eq!(differences[0]["table"], "old_chat_messages");
    let _ = f.bob;
}

#[actix_web::test]
async fn a_dry_run_writes_no_data_and_orphans_go_where_they_are_told() {
    let app = spawn_app().await;
    let (src, src_url) = legacy_database(include_str!("../src/import/legacy/flowmind.sql")).await;
    let f = fill_flowmind(&src).await;
    let config = import_config(&app);
    let path = report_path();
    let mut a = args(Source::Flowmind, &src_url, &path);
    a.dry_run = true;
    let before = data_events(&app.pool).await;
    assert!(import::run(&config, a).await.unwrap());
    assert_eq!(data_events(&app.pool).await, before);
    let report = read_report(&path);
    assert_eq!(table(&report, "auth.users")["imported"], 3, "{report}");

    let mut a = args(Source::Flowmind, &src_url, &path);
    a.assign_orphans_to = Some("ADA@example.org".into());
    assert!(import::run(&config, a).await.unwrap());
    let report = read_report(&path);
    assert_eq!(
        skipped(&report, "buildings", &f.orphan_building.to_string()),
        None,
        "{report}"
    );
    let org: Uuid = sqlx::query_scalar("SELECT organization_id FROM buildings WHERE id = $1")
        .bind(f.orphan_building)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(org, f.org);
}

/// A FluxStudio export directory with string ids, epoch-millisecond times and hostile rows.
fn write_fluxstudio_export() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ub-flux-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("uploads")).unwrap();
    let hash = bcrypt::hash(OLD_PASSWORD, 4).unwrap();
    let write = |table: &str, rows: Value| {
        std::fs::write(dir.join(format!("{table}.json")), rows.to_string()).unwrap()
    };
    write(
        "users",
        json!([
            {"id": "u_1", "email": "lena@studio.example", "name": "Lena", "password": hash, "userType": "designer", "createdAt": "2023-01-05T10:00:00Z"},
            {"id": "u_2", "email": "kai@studio.example", "name": "Kai", "googleId": "g-2", "userType": "client", "createdAt": 1_672_914_000_000i64},
            {"id": "u_3", "email": "nul@studio.example", "name": "Bad\u{0}Name", "createdAt": "2023-01-05T10:00:00Z"},
            {"id": "u_4", "email": "LENA@studio.example", "name": "Lena again", "createdAt": "2023-01-06T10:00:00Z"}
        ]),
    );
    write(
        "organizations",
        json!([{"id": "o_1", "name": "Studio Nord", "ownerId": "u_1", "createdAt": "2023-01-05T10:00:00Z"}]),
    );
    write(
        "organization_members",
        json!([
            {"organizationId": "o_1", "userId": "u_1", "role": "owner", "joinedAt": "2023-01-05T10:00:00Z"},
            {"organizationId": "o_1", "userId": "u_2", "role": "member", "joinedAt": 1_672_914_000_000i64},
            {"organizationId": "o_1", "userId": "u_9", "role": "member", "joinedAt": 1_672_914_000_000i64}
        ]),
    );
    write(
        "teams",
        json!([{"id": "t_1", "organizationId": "o_1", "name": "Design", "createdAt": "2023-01-05T10:00:00Z"}]),
    );
    write(
        "team_members",
        json!([{"teamId": "t_1", "userId": "u_1", "role": "lead"}, {"teamId": "t_1", "userId": "u_2", "role": "member"}]),
    );
    write(
        "projects",
        json!([{"id": "p_1", "organizationId": "o_1", "teamId": "t_1", "name": "Rebrand", "status": "active", "createdBy": "u_1", "createdAt": "2023-02-01T09:00:00Z"}]),
    );
    write(
        "project_members",
        json!([{"projectId": "p_1", "userId": "u_2", "role": "member"}]),
    );
    write(
        "project_milestones",
        json!([{"id": "ms_1", "projectId": "p_1", "title": "Logo", "dueDate": "2023-03-01", "completedAt": "2023-02-20T12:00:00Z"}]),
    );
    write(
        "conversations",
        json!([
            {"id": "c_1", "organizationId": "o_1", "type": "channel", "name": "general", "isPrivate": false, "createdBy": "u_1", "createdAt": "2023-01-05T10:00:00Z"},
            {"id": "c_2", "organizationId": "o_404", "type": "channel", "name": "lost", "isPrivate": false, "createdBy": "u_1", "createdAt": "2023-01-05T10:00:00Z"}
        ]),
    );
    write(
        "conversation_participants",
        json!([{"conversationId": "c_1", "userId": "u_1"}, {"conversationId": "c_1", "userId": "u_2"}]),
    );
    write(
        "messages",
        json!([
            {"id": "m_1", "conversationId": "c_1", "authorId": "u_1", "content": "Kick-off at ten", "createdAt": "2023-01-05T10:01:00Z"},
            {"id": "m_2", "conversationId": "c_1", "authorId": "u_2", "content": "On my way", "parentId": "m_1", "createdAt": 1_672_913_000_000i64 + 60_000},
            {"id": "m_3", "conversationId": "c_1", "authorId": "u_2", "content": "oops", "deletedAt": "2023-01-05T11:00:00Z", "createdAt": "2023-01-05T10:59:00Z"},
            {"id": "m_4", "conversationId": "c_2", "authorId": "u_1", "content": "nobody reads this", "createdAt": "2023-01-05T10:01:00Z"}
        ]),
    );
    write(
        "message_reactions",
        json!([{"messageId": "m_1", "userId": "u_2", "emoji": "👍", "createdAt": "2023-01-05T10:02:00Z"}]),
    );
    write(
        "invoices",
        json!([{"id": "inv_1", "organizationId": "o_1", "number": "2023-001", "clientName": "ACME", "currency": "EUR", "lines": [], "status": "paid"}]),
    );
    // Files: two versions of one file, a file outside projects shared with Kai, one whose
    // bytes are gone, one whose bytes are not what its row says, one that tries to leave
    // uploads/.
    std::fs::create_dir_all(dir.join("uploads/2023")).unwrap();
    std::fs::write(dir.join("uploads/2023/logo-1.svg"), FLUX_LOGO_1).unwrap();
    std::fs::write(dir.join("uploads/2023/logo-2.svg"), FLUX_LOGO_2).unwrap();
    std::fs::write(dir.join("uploads/brief.txt"), FLUX_BRIEF).unwrap();
    std::fs::write(dir.join("uploads/tampered.txt"), b"not what was stored").unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    };
    write(
        "files",
        json!([
            {"id": "f_2", "projectId": "p_1", "organizationId": "o_1", "name": "logo.svg", "mimeType": "image/svg+xml", "size": FLUX_LOGO_2.len(), "sha256": sha(FLUX_LOGO_2), "path": "2023/logo-2.svg", "version": 2, "previousVersionId": "f_1", "uploadedBy": "u_2", "createdAt": "2023-02-03T09:00:00Z"},
            {"id": "f_1", "projectId": "p_1", "organizationId": "o_1", "name": "logo.svg", "mimeType": "image/svg+xml", "size": FLUX_LOGO_1.len(), "path": "2023/logo-1.svg", "version": 1, "uploadedBy": "u_1", "createdAt": "2023-02-02T09:00:00Z"},
            {"id": "f_3", "organizationId": "o_1", "name": "brief.txt", "mimeType": "text/plain", "size": FLUX_BRIEF.len(), "path": "brief.txt", "version": 1, "uploadedBy": "u_1", "createdAt": 1_675_328_400_000i64},
            {"id": "f_4", "organizationId": "o_1", "name": "gone.bin", "mimeType": "application/octet-stream", "size": 10, "path": "gone.bin", "version": 1, "uploadedBy": "u_1", "createdAt": "2023-02-02T09:00:00Z"},
            {"id": "f_5", "organizationId": "o_1", "name": "tampered.txt", "mimeType": "text/plain", "size": 5, "sha256": sha(b"what was stored"), "path": "tampered.txt", "version": 1, "uploadedBy": "u_1", "createdAt": "2023-02-02T09:00:00Z"},
            {"id": "f_6", "organizationId": "o_1", "name": "passwd", "mimeType": "text/plain", "size": 5, "path": "../users.json", "version": 1, "uploadedBy": "u_1", "createdAt": "2023-02-02T09:00:00Z"}
        ]),
    );
    write(
        "file_permissions",
        json!([
            {"fileId": "f_3", "userId": "u_2", "permission": "edit"},
            {"fileId": "f_1", "teamId": "t_1", "permission": "view"},
            {"fileId": "f_3", "userId": "u_9", "permission": "view"},
            {"fileId": "f_4", "userId": "u_2", "permission": "view"}
        ]),
    );
    dir
}

const FLUX_LOGO_1: &[u8] = b"<svg xmlns='http://www.w3.org/2000/svg'><circle r='1'/></svg>";
const FLUX_LOGO_2: &[u8] = b"<svg xmlns='http://www.w3.org/2000/svg'><circle r='2'/></svg>";
const FLUX_BRIEF: &[u8] = b"Make it bold, make it blue.";

#[actix_web::test]
async fn a_fluxstudio_export_comes_in_with_mapped_ids_and_its_channels_answer_on_the_old_paths() {
    // The import stores file contents where the server reads them.
    let file_store =
        std::env::temp_dir().join(format!("ub-flux-store-{}", Uuid::new_v4().simple()));
    let store_url = file_store.display().to_string();
    let app = spawn_app_with({
        let store_url = store_url.clone();
        move |c| c.file_store_url = store_url
    })
    .await;
    let dir = write_fluxstudio_export();
    let mut config = import_config(&app);
    config.file_store_url = store_url;
    let path = report_path();
    let from = dir.to_str().unwrap();
    // A dry run reads and hashes the files' bytes and stores none of them.
    let dry = report_path();
    let mut dry_args = args(Source::Fluxstudio, from, &dry);
    dry_args.dry_run = true;
    assert!(import::run(&config, dry_args).await.unwrap());
    assert_eq!(
        table(&read_report(&dry), "files")["imported"],
        3,
        "{}",
        read_report(&dry)
    );
    assert!(
        !file_store.join("blobs").exists(),
        "a dry run stored file contents"
    );
    assert!(import::run(&config, args(Source::Fluxstudio, from, &path))
        .await
        .unwrap());
    let report = read_report(&path);
    assert_eq!(report["verified"], true, "{report}");
    assert!(
        file_store.join("blobs").exists(),
        "the import stored the files' bytes"
    );
    assert_eq!(
        skipped(&report, "users", "u_3").as_deref(),
        Some("invalid"),
        "{report}"
    );
    assert_eq!(
        skipped(&report, "users", "u_4").as_deref(),
        Some("duplicate")
    );
    assert_eq!(
        skipped(&report, "organization_members", "o_1/u_9").as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "conversations", "c_2").as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "messages", "m_4").as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "invoices", "inv_1").as_deref(),
        Some("unsupported")
    );
    assert_eq!(table(&report, "messages")["imported"], 3);
    assert_eq!(table(&report, "message_reactions")["imported"], 1);
    // Files: every version whose bytes are there, and the grants to who came in.
    assert_eq!(table(&report, "files")["imported"], 3, "{report}");
    assert_eq!(
        table(&report, "file_permissions")["imported"],
        2,
        "{report}"
    );
    assert_eq!(skipped(&report, "files", "f_4").as_deref(), Some("orphan"));
    assert_eq!(skipped(&report, "files", "f_5").as_deref(), Some("invalid"));
    assert_eq!(skipped(&report, "files", "f_6").as_deref(), Some("invalid"));
    assert_eq!(
        skipped(&report, "file_permissions", "f_3/u_9").as_deref(),
        Some("orphan")
    );
    assert_eq!(
        skipped(&report, "file_permissions", "f_4/u_2").as_deref(),
        Some("orphan")
    );

    // The mapping is readable: which id did legacy u_1 become.
    let lena = import::fluxstudio::id_of("user", "u_1");
    let kai = import::fluxstudio::id_of("user", "u_2");
    let registered: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT registered_at FROM users WHERE id = $1")
            .bind(kai)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // An epoch-millisecond time kept its value.
    assert_eq!(
        registered,
        Utc.timestamp_millis_opt(1_672_914_000_000).unwrap()
    );

    // Lena logs in with her old password on FluxStudio's path and reads #general.
    let res = reqwest::Client::new()
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": "lena@studio.example", "password": OLD_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let flux = frontend_client(tokens["access_token"].as_str().unwrap(), "fluxstudio");
    let channels: Value = flux
        .get(app.url("/api/channels"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let general = import::fluxstudio::id_of("conversation", "c_1");
    assert!(
        channels.to_string().contains(&general.to_string()),
        "{channels}"
    );
    let history: Value = flux
        .get(app.url(&format!("/api/channels/{general}/messages")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = history.to_string();
    assert!(text.contains("Kick-off at ten"), "{text}");
    // The imported file answers with its versions and its last version's bytes; the one
    // outside projects with its grant.
    let logo = import::fluxstudio::id_of("file", "f_1");
    let (status, versions) = {
        let res = flux
            .get(app.url(&format!("/api/files/{logo}/versions")))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "{versions}");
    assert_eq!(versions["items"].as_array().unwrap().len(), 2, "{versions}");
    let res = flux
        .get(app.url(&format!("/api/files/{logo}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], FLUX_LOGO_2);
    let res = flux
        .get(app.url(&format!(
            "/api/files/{}/content?version=1",
            import::fluxstudio::id_of("file", "f_1")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(&res.bytes().await.unwrap()[..], FLUX_LOGO_1);
    let brief = import::fluxstudio::id_of("file", "f_3");
    let res = flux
        .get(app.url(&format!("/api/files/{brief}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(&res.bytes().await.unwrap()[..], FLUX_BRIEF);
    let grant: String =
        sqlx::query_scalar("SELECT access FROM file_grants WHERE file_id = $1 AND grantee_id = $2")
            .bind(brief)
            .bind(kai)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(grant, "edit");
    assert!(
        !text.contains("oops"),
        "a deleted message shows no text: {text}"
    );
    // And on the socket: she joins the imported channel and answers in its imported thread.
    let node_args = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/socketio/imported.mjs").to_owned(),
        app.base.clone(),
        tokens["access_token"].as_str().unwrap().to_owned(),
        general.to_string(),
        import::fluxstudio::id_of("message", "m_1").to_string(),
    ];
    let output = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(node_args)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["joined"]["ok"], true, "{r}");
    assert_eq!(r["message"]["author_id"], lena.to_string(), "{r}");
    assert_eq!(
        r["message"]["parent_id"],
        import::fluxstudio::id_of("message", "m_1").to_string(),
        "{r}"
    );

    // Operators read which id a legacy id became, and the runs; others may not.
    let ids = "/api/v1/admin/imports/ids?source=fluxstudio&kind=user&legacy_id=u_1";
    assert_eq!(app.get_json(ids).await.0, 403);
    let store = universal_backend::store::PgEventStore::start(app.pool.clone(), Default::default())
        .await
        .unwrap();
    universal_backend::http::admin::set_operator(&app.pool, store, &app.tenant.email, true)
        .await
        .unwrap();
    let mut answer = (0, Value::Null);
    for _ in 0..200 {
        answer = app.get_json(ids).await;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["id"], lena.to_string());
    assert_eq!(answer.1["exists"], true);
    let (status, body) = app
        .get_json("/api/v1/admin/imports/ids?source=legacy&kind=user&legacy_id=u_1")
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, runs) = app.get_json("/api/v1/admin/imports").await;
    assert_eq!(status, 200);
    assert_eq!(
        runs["items"][0]["started"]["source"], "fluxstudio",
        "{runs}"
    );
    assert_eq!(runs["items"][0]["completed"]["verified"], true, "{runs}");

    // Idempotent: the second run writes no data event.
    let before = data_events(&app.pool).await;
    let again = report_path();
    assert!(import::run(&config, args(Source::Fluxstudio, from, &again))
        .await
        .unwrap());
    assert_eq!(read_report(&again)["events_written"], 0);
    assert_eq!(data_events(&app.pool).await, before);
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(file_store).ok();
}

#[actix_web::test]
async fn toolboxai_users_executions_and_content_then_the_analyses_of_those_users() {
    let app = spawn_app().await;
    let (src, src_url) = legacy_database(include_str!("../src/import/legacy/toolboxai.sql")).await;
    let (teacher, student) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = Utc.with_ymd_and_hms(2025, 9, 1, 8, 0, 0).unwrap();
    for (id, email, role, hash) in [
        (
            teacher,
            "teacher@school.example",
            "admin",
            Some(bcrypt::hash(OLD_PASSWORD, 4).unwrap()),
        ),
        (student, "student@school.example", "student", None),
    ] {
        sqlx::query("INSERT INTO users (id, email, username, hashed_password, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id)
            .bind(email)
            .bind(email.split('@').next().unwrap())
            .bind(hash)
            .bind(role)
            .bind(t0)
            .execute(&src)
            .await
            .unwrap();
    }
    let lesson = json!({"title": "Fractions", "summary": "Halves and quarters.", "sections": [{"heading": "Halves", "content": "One of two equal parts."}]});
    let content = Uuid::new_v4();
    sqlx::query("INSERT INTO educational_content (id, title, subject, grade_level, content, created_by, created_at) VALUES ($1, 'Fractions', 'maths', 4, $2, $3, $4)")
        .bind(content)
        .bind(&lesson)
        .bind(teacher)
        .bind(t0)
        .execute(&src)
        .await
        .unwrap();
    let (done, running, unknown) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, agent, task, status, result) in [
        (
            done,
            "content_generator",
            "generate_content",
            "completed",
            Some(lesson.clone()),
        ),
        (
            running,
            "content_generator",
            "generate_content",
            "running",
            None,
        ),
        (
            unknown,
            "essay_grader",
            "grade",
            "completed",
            Some(json!({})),
        ),
    ] {
        sqlx::query("INSERT INTO task_executions (id, agent_type, task_type, task_data, status, result, user_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(id)
            .bind(agent)
            .bind(task)
            .bind(json!({"subject": "maths", "grade_level": 4}))
            .bind(status)
            .bind(result)
            .bind(teacher)
            .bind(t0)
            .execute(&src)
            .await
            .unwrap();
    }
    let config = import_config(&app);
    let path = report_path();
    assert!(
        import::run(&config, args(Source::Toolboxai, &src_url, &path))
            .await
            .unwrap()
    );
    let report = read_report(&path);
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(table(&report, "task_executions")["imported"], 2, "{report}");
    assert_eq!(
        skipped(&report, "task_executions", &unknown.to_string()).as_deref(),
        Some("invalid")
    );
    assert_eq!(
        table(&report, "educational_content")["imported"],
        1,
        "{report}"
    );

    // The teacher logs in with the old password and reads the executions.
    let res = reqwest::Client::new()
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "teacher@school.example", "password": OLD_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let toolbox = frontend_client(tokens["access_token"].as_str().unwrap(), "toolbox");
    let (status, execution) = {
        let res = toolbox
            .get(app.url(&format!("/api/v1/agents/executions/{done}")))
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "{execution}");
    assert!(
        execution.to_string().contains("One of two equal parts."),
        "{execution}"
    );

    // The analyses of the same users.
    let (asrc, asrc_url) = legacy_database(include_str!("../src/import/legacy/analysis.sql")).await;
    let (analysis, orphan) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, user) in [(analysis, teacher), (orphan, Uuid::new_v4())] {
        sqlx::query("INSERT INTO analyses (id, user_id, title, status, documents, questions, ai_insight, created_at) VALUES ($1, $2, 'Reading test', 'completed', $3, $4, 'Most pupils read fluently.', $5)")
            .bind(id)
            .bind(user)
            .bind(json!([{"name": "class-4a.txt", "text": "Pupils read twenty pages a week."}]))
            .bind(json!(["How much do pupils read?"]))
            .bind(t0)
            .execute(&asrc)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO insights (id, analysis_id, user_id, text, created_at) VALUES ($1, $2, $3, 'Check class 4b too.', $4)")
        .bind(Uuid::new_v4())
        .bind(analysis)
        .bind(teacher)
        .bind(t0)
        .execute(&asrc)
        .await
        .unwrap();
    let path = report_path();
    let mut a = args(Source::Analysis, &asrc_url, &path);
    a.users_from = Some("toolboxai".into());
    assert!(import::run(&config, a).await.unwrap());
    let report = read_report(&path);
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(table(&report, "analyses")["imported"], 1, "{report}");
    assert_eq!(table(&report, "insights")["imported"], 1, "{report}");
    assert_eq!(
        skipped(&report, "analyses", &orphan.to_string()).as_deref(),
        Some("orphan")
    );
    // The teacher reads it, with both insights, on the analysis service's path.
    let teacher_client = client_for_token(tokens["access_token"].as_str().unwrap());
    let res = teacher_client
        .get(app.url(&format!("/api/v1/analysis/{analysis}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("Check class 4b too.") && text.contains("Most pupils read fluently."),
        "{text}"
    );
    // The test app's own tenant, another organization, does not see it.
    let (status, body) = app.get_json(&format!("/api/v1/analysis/{analysis}")).await;
    assert_eq!(status, 404, "{body}");
}

fn client_for_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[actix_web::test]
async fn an_import_killed_mid_run_completes_on_the_next_run_with_nothing_doubled() {
    let app = spawn_app().await;
    let (src, src_url) = legacy_database(include_str!("../src/import/legacy/flowmind.sql")).await;
    let scale = import::flowmind::Scale {
        organizations: 5,
        users: 200,
        buildings: 40,
        sensors_per_building: 2,
        readings: 100_000,
        sessions: 300,
        messages: 1_500,
        tasks: 100,
    };
    import::flowmind::generate(&src, scale, OLD_PASSWORD)
        .await
        .unwrap();

    // The real command, killed with SIGKILL once it is writing buildings.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_universal-backend"))
        .args(["import", "flowmind", "--from", &src_url])
        .env("DATABASE_URL", &app.database_url)
        .env("RUN_PROJECTIONS", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let buildings: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE stream_category = 'building' AND event_type = 'ReadingsRecorded'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be killed"
        );
        if buildings > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = data_events(&app.pool).await;

    let config = import_config(&app);
    let path = report_path();
    assert!(
        import::run(&config, args(Source::Flowmind, &src_url, &path))
            .await
            .unwrap()
    );
    let report = read_report(&path);
    assert_eq!(report["verified"], true, "{report}");
    let readings = table(&report, "energy_readings");
    // Every reading is here exactly once: some from the killed run, the rest from this one,
    // and the verification compared the counts per sensor and day with the source.
    assert_eq!(readings["read"], 100_000);
    assert_eq!(
        readings["imported"].as_u64().unwrap() + readings["unchanged"].as_u64().unwrap(),
        100_000
    );
    assert!(readings["unchanged"].as_u64().unwrap() > 0 || partial > 0);
    let sum: f64 = sqlx::query_scalar("SELECT sum(samples)::float8 FROM energy_daily")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sum, 100_000.0);
    // And a third run finds everything in place.
    let again = report_path();
    assert!(
        import::run(&config, args(Source::Flowmind, &src_url, &again))
            .await
            .unwrap()
    );
    assert_eq!(read_report(&again)["events_written"], 0);
}
