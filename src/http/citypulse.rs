//! CityPulse: buildings, sensors, readings, thresholds, energy and alerts.
//!
//! Commands go to the building's actor; queries read the CityPulse read models. Every query
//! accepts `min_position=P` and then answers only once the read model has caught up with P
//! (at most 5 s, then 504 with the current checkpoint): pass the `position` a command
//! returned to read your own write.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::building::SensorKind;
use universal_events::identity::Frontend;
use uuid::Uuid;

use super::command::{
    idempotent, if_match, parse_json, scoped_meta, wait_for_projection as wait, Answer, Page,
};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::building::{
    Building, BuildingCommand, BuildingError, ReadingInput, ScopedCommand,
};
use crate::actors::{CommandMeta, CommandReply};
use crate::state::AppState;

const DIRECTORY: &str = "citypulse_directory";
const ENERGY: &str = "citypulse_energy";

pub fn configure(cfg: &mut web::ServiceConfig) {
    let enabled = actix_web::guard::fn_guard(|ctx| {
        ctx.app_data::<web::Data<AppState>>()
            .is_none_or(|s| s.config.citypulse_enabled)
    });
    cfg.service(
        web::scope("/citypulse")
            .guard(enabled)
            .route("/buildings", web::post().to(create_building))
            .route("/buildings", web::get().to(list_buildings))
            // One pattern match for a building's routes, then plain comparisons.
            .service(
                web::scope("/buildings/{id}")
                    .route("", web::get().to(get_building))
                    .route("/readings", web::post().to(post_readings))
                    .route("/sensors", web::post().to(add_sensor))
                    .route("/sensors", web::get().to(list_sensors))
                    .route(
                        "/sensors/{sensor_id}",
                        web::delete().to(decommission_sensor),
                    )
                    .route("/thresholds", web::put().to(set_threshold))
                    .route("/energy", web::get().to(energy))
                    .route("/alerts", web::get().to(alerts)),
            ),
    )
    // With CITYPULSE_ENABLED=false the guard above fails and requests land here.
    .service(web::scope("/citypulse").default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::new(
            StatusCode::NOT_FOUND,
            "feature_disabled",
            "CityPulse is disabled on this server",
        ))
    })));
}

fn building_error(e: BuildingError) -> ApiError {
    match e {
        BuildingError::NotFound => ApiError::not_found("building not found"),
        BuildingError::AlreadyRegistered => ApiError::conflict("building is already registered"),
        BuildingError::Invalid { field, message } => ApiError::validation(field, message),
        BuildingError::UnknownSensor(id) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_sensor",
            format!("sensor {id} is not registered in this building"),
        )
        .with_details(json!({ "sensor_id": id })),
        BuildingError::SensorDecommissioned(id) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sensor_decommissioned",
            format!("sensor {id} is decommissioned"),
        )
        .with_details(json!({ "sensor_id": id })),
        BuildingError::SensorExists(id) => {
            ApiError::conflict(format!("sensor {id} is already registered"))
        }
    }
}

/// Who may command: a writer of an organization with CityPulse enabled.
fn writer(who: &Principal, req: &HttpRequest) -> Result<Uuid, ApiError> {
    let org = who.frontend(req, Frontend::Citypulse)?;
    who.require_writer()?;
    Ok(org)
}

/// Runs a building command and shapes the usual `{id, version, position}` answer. `meta`
/// is the handler's ([`scoped_meta`]): the ids a handler derives from its command id (a new
/// building's, a sensor's) and those the actor derives (events', alerts') then follow from
/// one command id.
async fn run(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
    cmd: BuildingCommand,
    meta: CommandMeta,
    status: StatusCode,
    extra: impl FnOnce(&CommandReply<Building>) -> Value,
) -> Result<Answer, ApiError> {
    let expected = if_match(req)?;
    let cmd = ScopedCommand {
        organization_id: meta.organization_id,
        cmd,
    };
    let reply = state
        .registries
        .buildings
        .execute(id, cmd, expected, meta)
        .await
        .map_err(|e| command_error(e, building_error))?;
    let mut answer = Answer::of(status, id, &reply);
    if let (Value::Object(map), Value::Object(more)) = (&mut answer.body, extra(&reply)) {
        map.extend(more);
    }
    Ok(answer)
}

fn check_text(field: &str, value: &Option<String>, max: usize) -> Result<(), ApiError> {
    if value.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(ApiError::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBuilding {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    address: Option<String>,
    #[schema(exclusive_minimum = 0.0, maximum = 1.0e9)]
    floor_area_m2: Option<f64>,
}

/// Registers a building in the caller's organization.
#[utoipa::path(
    post,
    path = "/api/v1/citypulse/buildings",
    tag = "citypulse",
    request_body = CreateBuilding,
    params(super::schema::CityPulseHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Registered", body = super::schema::BuildingCreated),
    ),
)]
async fn create_building(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: CreateBuilding = parse_json(&body)?;
    check_text("address", &input.address, 500)?;
    let meta = scoped_meta(&req, &who, org, None)?;
    // With an idempotency key the id follows from it, so a retry names the same building.
    let id = Uuid::new_v5(&meta.command_id, b"building");
    let cmd = BuildingCommand::Register {
        name: input.name,
        address: input.address,
        floor_area_m2: input.floor_area_m2,
        at: Utc::now(),
        building_id: id,
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        let mut answer = run(&state, &req, id, cmd, meta, StatusCode::CREATED, |_| {
            json!({})
        })
        .await?;
        answer.body["location"] = json!(format!("/api/v1/citypulse/buildings/{id}"));
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddSensor {
    #[schema(value_type = super::schema::SensorKind)]
    kind: SensorKind,
    /// electricity `Wh kWh MWh`, gas `m3 kWh`, water `L m3`, temperature `C F K`.
    #[schema(min_length = 1, max_length = 20, pattern = r"^[^\u0000]*$")]
    unit: String,
    #[schema(max_length = 200, pattern = r"^[^\u0000]*$")]
    name: Option<String>,
}

/// Adds a sensor to a building.
#[utoipa::path(
    post,
    path = "/api/v1/citypulse/buildings/{id}/sensors",
    tag = "citypulse",
    request_body = AddSensor,
    params(("id" = Uuid, Path, description = "The building"), super::schema::CityPulseHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Registered", body = super::schema::SensorCommandResult),
    ),
)]
async fn add_sensor(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let id = path.into_inner();
    let input: AddSensor = parse_json(&body)?;
    let meta = scoped_meta(&req, &who, org, None)?;
    let sensor_id = Uuid::new_v5(&meta.command_id, b"sensor");
    let cmd = BuildingCommand::RegisterSensor {
        sensor_id,
        kind: input.kind,
        unit: input.unit,
        name: input.name,
    };
    idempotent(&state.pool, &req, &who, &body, || {
        run(
            &state,
            &req,
            id,
            cmd,
            meta,
            StatusCode::CREATED,
            |_| json!({ "sensor_id": sensor_id }),
        )
    })
    .await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Decommission {
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    reason: Option<String>,
}

/// Decommissions a sensor; the body is optional.
#[utoipa::path(
    delete,
    path = "/api/v1/citypulse/buildings/{id}/sensors/{sensor_id}",
    tag = "citypulse",
    request_body = Option<Decommission>,
    params(("id" = Uuid, Path, description = "The building"), ("sensor_id" = Uuid, Path, description = "The sensor"), super::schema::CityPulseHeaders, super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Decommissioned", body = super::schema::SensorCommandResult),
    ),
)]
async fn decommission_sensor(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, sensor_id) = path.into_inner();
    let input: Decommission = if body.iter().all(u8::is_ascii_whitespace) {
        Decommission::default()
    } else {
        parse_json(&body)?
    };
    check_text("reason", &input.reason, 500)?;
    let meta = scoped_meta(&req, &who, org, None)?;
    let cmd = BuildingCommand::DecommissionSensor {
        sensor_id,
        reason: input.reason,
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        run(
            &state,
            &req,
            id,
            cmd,
            meta,
            StatusCode::OK,
            |_| json!({ "sensor_id": sensor_id }),
        )
        .await
        .map_err(|e| match e.code {
            "unknown_sensor" => ApiError::not_found("sensor not found"),
            _ => e,
        })
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PostReadings {
    #[schema(min_items = 1, max_items = 1000)]
    readings: Vec<ReadingBody>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReadingBody {
    sensor_id: Uuid,
    /// An interval amount (never negative) for consumption kinds; any value for temperature.
    #[schema(minimum = -1.0e12, maximum = 1.0e12)]
    value: f64,
    /// When it was measured (also accepted as `measured_at`); the time of the request when
    /// absent; not in the future.
    #[serde(alias = "measured_at")]
    timestamp: Option<DateTime<Utc>>,
}

/// Records 1 to 1,000 readings of the building's sensors.
#[utoipa::path(
    post,
    path = "/api/v1/citypulse/buildings/{id}/readings",
    tag = "citypulse",
    request_body = PostReadings,
    params(("id" = Uuid, Path, description = "The building"), super::schema::CityPulseHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Recorded", body = super::schema::ReadingsRecorded),
    ),
)]
async fn post_readings(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let id = path.into_inner();
    let input: PostReadings = parse_json(&body)?;
    let now = Utc::now();
    let meta = scoped_meta(&req, &who, org, None)?;
    let cmd = BuildingCommand::RecordReadings {
        command_id: meta.command_id,
        received_at: now,
        readings: input
            .readings
            .into_iter()
            .map(|r| ReadingInput {
                sensor_id: r.sensor_id,
                value: r.value,
                measured_at: r.timestamp.unwrap_or(now),
            })
            .collect(),
    };
    idempotent(&state.pool, &req, &who, &body, || {
        run(&state, &req, id, cmd, meta, StatusCode::CREATED, |reply| {
            let alerts = reply
                .events
                .iter()
                .filter(|e| matches!(e, universal_events::BuildingEvent::AlertRaised(_)))
                .count();
            json!({ "alerts_raised": alerts })
        })
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetThreshold {
    #[schema(value_type = super::schema::SensorKind)]
    kind: SensorKind,
    #[schema(minimum = -1.0e12, maximum = 1.0e12)]
    min: Option<f64>,
    #[schema(minimum = -1.0e12, maximum = 1.0e12)]
    max: Option<f64>,
}

/// Sets the limits of a sensor kind; a reading that crosses one raises an alert.
#[utoipa::path(
    put,
    path = "/api/v1/citypulse/buildings/{id}/thresholds",
    tag = "citypulse",
    request_body = SetThreshold,
    params(("id" = Uuid, Path, description = "The building"), super::schema::CityPulseHeaders, super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Set", body = super::schema::CommandResult),
    ),
)]
async fn set_threshold(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let id = path.into_inner();
    let input: SetThreshold = parse_json(&body)?;
    let meta = scoped_meta(&req, &who, org, None)?;
    let cmd = BuildingCommand::SetThreshold {
        kind: input.kind,
        min: input.min,
        max: input.max,
    };
    idempotent(&state.pool, &req, &who, &body, || {
        run(&state, &req, id, cmd, meta, StatusCode::OK, |_| json!({}))
    })
    .await
}

// ---- queries ----

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReadParams {
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct BuildingRow {
    id: Uuid,
    name: String,
    address: Option<String>,
    floor_area_m2: Option<f64>,
    registered_at: DateTime<Utc>,
    version: i64,
    active_sensors: i32,
    open_alerts: i32,
    last_reading_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    created_position: i64,
}

const BUILDING_COLUMNS: &str = "id, name, address, floor_area_m2, registered_at, version, \
    active_sensors, open_alerts, last_reading_at, created_position";

/// Lists the organization's buildings, oldest first; `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/citypulse/buildings",
    tag = "citypulse",
    params(ListParams, super::schema::CityPulseHeaders),
    responses(
        (status = 200, description = "Buildings, oldest first", body = super::schema::BuildingPage),
    ),
)]
async fn list_buildings(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Citypulse)?;
    wait(&state, DIRECTORY, params.min_position).await?;
    let page = Page::parse(params.limit, (50, 500), &params.cursor, 0)?;
    let mut rows: Vec<BuildingRow> = sqlx::query_as(&format!(
        "SELECT {BUILDING_COLUMNS} FROM buildings WHERE organization_id = $3 \
         AND created_position > $1 ORDER BY created_position LIMIT $2"
    ))
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(org)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

#[derive(Serialize, sqlx::FromRow)]
struct SensorRow {
    id: Uuid,
    kind: String,
    unit: String,
    name: Option<String>,
    status: String,
    last_value: Option<f64>,
    last_reading_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, sqlx::FromRow)]
struct ThresholdRow {
    kind: String,
    min_value: Option<f64>,
    max_value: Option<f64>,
}

/// A building of the caller's organization; another organization's is "not found".
async fn find_building(state: &AppState, org: Uuid, id: Uuid) -> Result<BuildingRow, ApiError> {
    super::command::find_in_org(
        &state.pool,
        ("buildings", BUILDING_COLUMNS),
        org,
        id,
        "building",
    )
    .await
}

/// One building with its sensors and thresholds.
#[utoipa::path(
    get,
    path = "/api/v1/citypulse/buildings/{id}",
    tag = "citypulse",
    params(("id" = Uuid, Path, description = "The building"), ReadParams, super::schema::CityPulseHeaders),
    responses(
        (status = 200, description = "The building; `ETag` is its version", body = super::schema::BuildingDetail),
    ),
)]
async fn get_building(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Citypulse)?;
    wait(&state, DIRECTORY, params.min_position).await?;
    let id = path.into_inner();
    // Three reads on three connections at once: each is its own snapshot either way.
    let sensors = async {
        sqlx::query_as::<_, SensorRow>(
            "SELECT id, kind, unit, name, status, last_value, last_reading_at FROM sensors \
             WHERE building_id = $1 ORDER BY registered_position",
        )
        .bind(id)
        .fetch_all(&state.pool)
        .await
        .map_err(ApiError::from)
    };
    let thresholds = async {
        sqlx::query_as::<_, ThresholdRow>(
            "SELECT kind, min_value, max_value FROM thresholds WHERE building_id = $1 ORDER BY kind",
        )
        .bind(id)
        .fetch_all(&state.pool)
        .await
        .map_err(ApiError::from)
    };
    let (building, sensors, thresholds) =
        tokio::try_join!(find_building(&state, org, id), sensors, thresholds)?;
    let version = building.version;
    let mut body = serde_json::to_value(&building).map_err(ApiError::internal)?;
    body["sensors"] = json!(sensors);
    body["thresholds"] = json!(thresholds);
    Ok(super::command::with_etag(version, &body))
}

/// The sensors of a building, with status and last reading.
#[utoipa::path(
    get,
    path = "/api/v1/citypulse/buildings/{id}/sensors",
    tag = "citypulse",
    params(("id" = Uuid, Path, description = "The building"), ReadParams, super::schema::CityPulseHeaders),
    responses(
        (status = 200, description = "Sensors with status and last reading", body = super::schema::SensorList),
    ),
)]
async fn list_sensors(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Citypulse)?;
    wait(&state, DIRECTORY, params.min_position).await?;
    let id = path.into_inner();
    find_building(&state, org, id).await?;
    let sensors: Vec<SensorRow> = sqlx::query_as(
        "SELECT id, kind, unit, name, status, last_value, last_reading_at FROM sensors \
         WHERE building_id = $1 ORDER BY registered_position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": sensors })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EnergyParams {
    /// Start (inclusive; default: a day or a month before `to`).
    from: Option<DateTime<Utc>>,
    /// End (exclusive; default: now). At most 93 days after `from` for hours, 3,660 for days.
    to: Option<DateTime<Utc>>,
    /// `hour` (default) or `day`.
    #[param(value_type = Option<super::schema::Bucket>, inline)]
    bucket: Option<String>,
    /// Only this sensor.
    sensor_id: Option<Uuid>,
    /// Only this kind.
    #[param(value_type = Option<super::schema::SensorKind>, inline)]
    kind: Option<SensorKind>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct EnergyRow {
    bucket: DateTime<Utc>,
    sensor_id: Uuid,
    kind: String,
    unit: String,
    total: f64,
    samples: i64,
    min_value: f64,
    max_value: f64,
}

/// Years 1 to 9999: what readings can carry and what PostgreSQL and clients handle alike.
fn in_calendar(name: &str, at: DateTime<Utc>) -> Result<(), ApiError> {
    use chrono::Datelike;
    if !(1..=9999).contains(&at.year()) {
        return Err(ApiError::bad_request(format!(
            "`{name}` must lie between the years 1 and 9999"
        )));
    }
    Ok(())
}

/// Energy per hour or day and sensor.
#[utoipa::path(
    get,
    path = "/api/v1/citypulse/buildings/{id}/energy",
    tag = "citypulse",
    params(("id" = Uuid, Path, description = "The building"), EnergyParams, super::schema::CityPulseHeaders),
    responses(
        (status = 200, description = "Energy per bucket and sensor", body = super::schema::EnergySeries),
    ),
)]
async fn energy(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<EnergyParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Citypulse)?;
    let id = path.into_inner();
    let (table, span, max_span) = match params.bucket.as_deref().unwrap_or("hour") {
        "hour" => ("energy_hourly", TimeDelta::days(1), TimeDelta::days(93)),
        "day" => ("energy_daily", TimeDelta::days(31), TimeDelta::days(3660)),
        other => {
            return Err(ApiError::bad_request(format!(
                "bucket must be `hour` or `day`, not `{other}`"
            )))
        }
    };
    let to = params.to.unwrap_or_else(Utc::now);
    in_calendar("to", to)?;
    // `to - span` overflows (and panics) near chrono's limits: checked, then held to the calendar.
    let from = match params.from {
        Some(from) => from,
        None => to
            .checked_sub_signed(span)
            .ok_or_else(|| ApiError::bad_request("`to` is too early to have a default `from`"))?,
    };
    in_calendar("from", from)?;
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    if to - from > max_span {
        return Err(ApiError::bad_request(format!(
            "the range may span at most {} days for this bucket",
            max_span.num_days()
        )));
    }
    // The building itself is read from the directory: both must have caught up.
    wait(&state, ENERGY, params.min_position).await?;
    wait(&state, DIRECTORY, params.min_position).await?;
    find_building(&state, org, id).await?;
    let rows: Vec<EnergyRow> = sqlx::query_as(&format!(
        "SELECT bucket, sensor_id, kind, unit, total, samples, min_value, max_value FROM {table} \
         WHERE building_id = $1 AND bucket >= $2 AND bucket < $3 \
         AND ($4::uuid IS NULL OR sensor_id = $4) AND ($5::text IS NULL OR kind = $5) \
         ORDER BY bucket, sensor_id"
    ))
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(params.sensor_id)
    .bind(params.kind.map(|k| k.as_str()))
    .fetch_all(&state.pool)
    .await?;
    let series: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let average = r.total / r.samples.max(1) as f64;
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            v["average"] = json!(average);
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "building_id": id,
        "bucket": params.bucket.as_deref().unwrap_or("hour"),
        "from": from,
        "to": to,
        "series": series,
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AlertParams {
    /// `all` (default) or `open`.
    #[param(value_type = Option<super::schema::AlertStatus>, inline)]
    status: Option<String>,
    /// Most alerts (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct AlertRow {
    id: Uuid,
    sensor_id: Uuid,
    kind: String,
    bound: String,
    limit_value: f64,
    value: f64,
    raised_at: DateTime<Utc>,
    position: i64,
    resolved_at: Option<DateTime<Utc>>,
    resolved_value: Option<f64>,
}

/// The alerts of a building, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/citypulse/buildings/{id}/alerts",
    tag = "citypulse",
    params(("id" = Uuid, Path, description = "The building"), AlertParams, super::schema::CityPulseHeaders),
    responses(
        (status = 200, description = "Alerts, newest first", body = super::schema::AlertList),
    ),
)]
async fn alerts(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<AlertParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Citypulse)?;
    let id = path.into_inner();
    let open_only = match params.status.as_deref().unwrap_or("all") {
        "all" => false,
        "open" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "status must be `open` or `all`, not `{other}`"
            )))
        }
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    wait(&state, DIRECTORY, params.min_position).await?;
    find_building(&state, org, id).await?;
    let rows: Vec<AlertRow> = sqlx::query_as(
        "SELECT id, sensor_id, kind, bound, limit_value, value, raised_at, position, \
         resolved_at, resolved_value FROM alerts WHERE building_id = $1 \
         AND (NOT $2 OR resolved_at IS NULL) ORDER BY position DESC LIMIT $3",
    )
    .bind(id)
    .bind(open_only)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": rows })))
}
