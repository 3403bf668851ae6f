//! The analysis service (`/api/v1/analysis`): start an analysis, follow it, add insights,
//! read its report.
//!
//! An analysis is a swarm task of type `analysis` (see `crate::tasks::analysis`): the
//! scheduler runs it under the same caps, leader and interruption rules as the Quantum and
//! Velocity tasks. Every route is scoped to the caller's organization: another
//! organization's analysis is 404. Starting one and saving insights need a writer's role;
//! reading needs membership only.
//!
//! The same handlers serve the legacy Next.js routes (`/api/start-analysis`,
//! `/api/getAnalysis`, ...) when their flag says `new` (see `super::legacy`).

use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::swarm::{
    AnalysisConfig, AnalysisDocument, InsightSource, TaskConfig, TaskType,
};
use uuid::Uuid;

use super::command::{idempotent, meta, parse_json, wait_for_projection as wait, Answer};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::swarm_task::{ScopedCommand, SwarmCommand, SwarmError};
use crate::projections::analysis::NAME as PROJECTION;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/analysis", web::post().to(start))
        .route("/analysis/{id}", web::get().to(get_analysis))
        .route("/analysis/{id}/insights", web::post().to(save_insight))
        .route("/analysis/{id}/report", web::get().to(report));
}

/// The caller's organization.
pub(crate) fn organization(who: &Principal) -> Result<Uuid, ApiError> {
    who.organization_id.ok_or_else(|| {
        ApiError::forbidden(
            "forbidden",
            "the session belongs to no organization; log in to one",
        )
    })
}

fn analysis_error(e: SwarmError) -> ApiError {
    match e {
        SwarmError::NotFound | SwarmError::NotAnalysis => ApiError::not_found("analysis not found"),
        SwarmError::AlreadyExists => ApiError::conflict("analysis already exists"),
        SwarmError::Invalid { field, message } => ApiError::validation(&field, message),
        SwarmError::Finished(status) => ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("the analysis has {status}"),
        ),
        e @ (SwarmError::NotStartable(_) | SwarmError::NotRunning(_)) => {
            ApiError::conflict(e.to_string())
        }
    }
}

/// One document to analyse.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DocumentBody {
    #[schema(max_length = 200)]
    name: String,
    #[schema(max_length = 100000)]
    text: String,
}

/// An analysis to start: 1 to 50 documents (400,000 characters in all), up to 20
/// questions for the AI step, and its model (the server's default when left out).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartAnalysis {
    #[schema(max_length = 200)]
    title: String,
    documents: Vec<DocumentBody>,
    #[serde(default)]
    questions: Vec<String>,
    model: Option<String>,
}

/// A started analysis.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AnalysisStarted {
    id: Uuid,
    version: i64,
    position: i64,
    #[schema(value_type = String)]
    status: String,
    location: String,
}

/// Starts an analysis: it waits in the organization's queue of swarm tasks until the
/// scheduler runs it. Answers at once with its id; follow it with `GET …/{id}` or the
/// Socket.IO namespace `/analysis`.
#[utoipa::path(
    post,
    path = "/api/v1/analysis",
    tag = "analysis",
    request_body = StartAnalysis,
    params(super::schema::CommandHeaders),
    responses((status = 202, description = "Accepted and queued", body = AnalysisStarted)),
)]
pub(crate) async fn start(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = organization(&who)?;
    who.require_writer()?;
    let input: StartAnalysis = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    let id = Uuid::new_v5(&meta.command_id, b"analysis");
    let config = AnalysisConfig {
        title: input.title.trim().to_owned(),
        documents: input
            .documents
            .into_iter()
            .map(|d| AnalysisDocument {
                name: d.name.trim().to_owned(),
                text: d.text,
            })
            .collect(),
        questions: input
            .questions
            .into_iter()
            .map(|q| q.trim().to_owned())
            .collect(),
        model: input.model,
    };
    if let Some(model) = &config.model {
        if state.providers.for_model(model).is_none() {
            return Err(ApiError::validation(
                "model",
                "no provider of this server serves it",
            ));
        }
    }
    let cmd = ScopedCommand {
        organization_id: org,
        cmd: SwarmCommand::Create {
            task_id: id,
            user_id: who.user_id,
            task_type: TaskType::Analysis,
            objective: config.title.clone(),
            config: TaskConfig::Analysis(config),
            at: Utc::now(),
        },
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        super::swarm::admit(&state, &cmd).await?;
        let mut meta = meta.clone();
        meta.organization_id = Some(org);
        let reply = state
            .registries
            .swarm_tasks
            .execute(id, cmd, None, meta)
            .await
            .map_err(|e| command_error(e, analysis_error))?;
        state.swarm.created(reply.position);
        let mut answer = Answer::of(StatusCode::ACCEPTED, id, &reply);
        answer.body["status"] = json!("queued");
        answer.body["location"] = json!(format!("/api/v1/analysis/{id}"));
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadParams {
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: Uuid,
    title: String,
    questions: Value,
    model: Option<String>,
    documents: Value,
    status: String,
    created_at: DateTime<Utc>,
    attempt: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    done: i64,
    total: i64,
    current_document: Option<String>,
    results: Option<Value>,
    error: Option<String>,
    version: i64,
}

#[derive(sqlx::FromRow, Serialize, utoipa::ToSchema)]
struct InsightView {
    insight_id: Uuid,
    /// `ai` (the analysis's AI step) or `user`.
    source: String,
    user_id: Option<Uuid>,
    model: Option<String>,
    text: String,
    at: DateTime<Utc>,
    position: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProgressView {
    done: i64,
    total: i64,
    current_document: Option<String>,
    percent: f64,
}

/// An analysis: where it stands, its results and its insights.
#[derive(Serialize, utoipa::ToSchema)]
struct AnalysisView {
    id: Uuid,
    user_id: Uuid,
    title: String,
    #[schema(value_type = Vec<String>)]
    questions: Value,
    model: Option<String>,
    /// The documents' names and sizes.
    #[schema(value_type = Vec<Object>)]
    documents: Value,
    /// `queued`, `running`, `completed`, `failed`, `cancelled` or `interrupted`.
    status: String,
    created_at: DateTime<Utc>,
    attempt: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    progress: ProgressView,
    /// Per document and over all: words, sentences, most frequent terms (null until the
    /// results step).
    #[schema(value_type = Option<Object>)]
    results: Option<Value>,
    insights: Vec<InsightView>,
    error: Option<String>,
    version: i64,
}

/// Reads an analysis of `org` from the read models.
async fn find(state: &AppState, org: Uuid, id: Uuid) -> Result<AnalysisView, ApiError> {
    let row: Row = sqlx::query_as(
        "SELECT id, user_id, title, questions, model, documents, status, created_at, attempt, \
         started_at, finished_at, done, total, current_document, results, error, version \
         FROM analyses WHERE id = $1 AND organization_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("analysis not found"))?;
    let insights: Vec<InsightView> = sqlx::query_as(
        "SELECT insight_id, source, user_id, model, text, at, position FROM analysis_insights \
         WHERE analysis_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let percent = if row.total > 0 {
        (row.done as f64 * 100.0 / row.total as f64).min(100.0)
    } else {
        0.0
    };
    Ok(AnalysisView {
        id: row.id,
        user_id: row.user_id,
        title: row.title,
        questions: row.questions,
        model: row.model,
        documents: row.documents,
        status: row.status,
        created_at: row.created_at,
        attempt: row.attempt,
        started_at: row.started_at,
        finished_at: row.finished_at,
        progress: ProgressView {
            done: row.done,
            total: row.total,
            current_document: row.current_document,
            percent,
        },
        results: row.results,
        insights,
        error: row.error,
        version: row.version,
    })
}

/// An analysis of the caller's organization, as JSON (shared with the legacy routes).
pub(crate) async fn view(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    min_position: Option<i64>,
) -> Result<Value, ApiError> {
    let org = organization(who)?;
    wait(state, PROJECTION, min_position).await?;
    let view = find(state, org, id).await?;
    serde_json::to_value(view).map_err(ApiError::internal)
}

#[utoipa::path(
    get,
    path = "/api/v1/analysis/{id}",
    tag = "analysis",
    params(("id" = Uuid, Path, description = "The analysis"), ReadParams),
    responses((status = 200, description = "The analysis", body = AnalysisView)),
)]
pub(crate) async fn get_analysis(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let body = view(&state, &who, path.into_inner(), params.min_position).await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            actix_web::http::header::ETAG,
            format!("\"{}\"", body["version"]),
        ))
        .json(body))
}

/// An insight to save on an analysis.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SaveInsight {
    #[schema(max_length = 8000)]
    pub text: String,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct InsightSaved {
    id: Uuid,
    insight_id: Uuid,
    version: i64,
    position: i64,
}

/// Saves an insight on an analysis (any state but cancelled); it joins the analysis's
/// stream and report, and the `/analysis` namespace emits it.
#[utoipa::path(
    post,
    path = "/api/v1/analysis/{id}/insights",
    tag = "analysis",
    request_body = SaveInsight,
    params(("id" = Uuid, Path, description = "The analysis"), super::schema::CommandHeaders),
    responses((status = 201, description = "Saved", body = InsightSaved)),
)]
pub(crate) async fn save_insight(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: SaveInsight = parse_json(&body)?;
    insight(&state, &req, &who, path.into_inner(), input.text, &body).await
}

/// Records a user's insight (shared with the legacy `saveInsights`).
pub(crate) async fn insight(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    who: &Principal,
    id: Uuid,
    text: String,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let org = organization(who)?;
    who.require_writer()?;
    let meta = meta(req, who)?;
    let insight_id = Uuid::new_v5(&meta.command_id, b"insight");
    idempotent(&state.pool, req, who, body, || async {
        let mut meta = meta.clone();
        meta.organization_id = Some(org);
        let cmd = ScopedCommand {
            organization_id: org,
            cmd: SwarmCommand::RecordInsight {
                insight_id,
                source: InsightSource::User,
                user_id: Some(who.user_id),
                attempt: None,
                model: None,
                text,
                at: Utc::now(),
            },
        };
        let reply = state
            .registries
            .swarm_tasks
            .execute(id, cmd, None, meta)
            .await
            .map_err(|e| command_error(e, analysis_error))?;
        let mut answer = Answer::of(StatusCode::CREATED, id, &reply);
        answer.body["insight_id"] = json!(insight_id);
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportParams {
    /// `markdown` (the default unless `Accept` prefers `text/html`) or `html`.
    #[param(pattern = "^(markdown|html)$")]
    format: Option<String>,
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// Markdown text from user or document input: no raw HTML, no line breaks in table cells.
fn inline(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn terms(list: Option<&Value>) -> String {
    list.and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{} ({})",
                        inline(t["term"].as_str().unwrap_or("")),
                        t["count"].as_u64().unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The report of an analysis, in Markdown.
fn markdown(a: &AnalysisView) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", inline(&a.title));
    let _ = writeln!(md, "- Status: {}", a.status);
    let _ = writeln!(md, "- Created: {}", a.created_at.to_rfc3339());
    if let Some(f) = a.finished_at {
        let _ = writeln!(md, "- Finished: {}", f.to_rfc3339());
    }
    let _ = writeln!(
        md,
        "- Documents: {} of {} analysed",
        a.progress.done, a.progress.total
    );
    if let Some(e) = &a.error {
        let _ = writeln!(md, "- Error: {}", inline(e));
    }
    if let Some(qs) = a.questions.as_array().filter(|q| !q.is_empty()) {
        let _ = writeln!(md, "\n## Questions\n");
        for q in qs {
            let _ = writeln!(md, "- {}", inline(q.as_str().unwrap_or("")));
        }
    }
    let _ = writeln!(md, "\n## Results\n");
    match &a.results {
        None => {
            let _ = writeln!(md, "No results yet.");
        }
        Some(r) => {
            let _ = writeln!(
                md,
                "{} words in {} sentences. Most frequent terms: {}.\n",
                r["words"].as_u64().unwrap_or(0),
                r["sentences"].as_u64().unwrap_or(0),
                terms(r.get("top_terms"))
            );
            let _ = writeln!(md, "| Document | Words | Sentences | Most frequent terms |");
            let _ = writeln!(md, "|---|---:|---:|---|");
            for d in r["documents"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    inline(d["name"].as_str().unwrap_or("")),
                    d["words"].as_u64().unwrap_or(0),
                    d["sentences"].as_u64().unwrap_or(0),
                    terms(d.get("top_terms"))
                );
            }
        }
    }
    let _ = writeln!(md, "\n## Insights\n");
    if a.insights.is_empty() {
        let _ = writeln!(md, "No insights yet.");
    }
    for i in &a.insights {
        let who = match (i.source.as_str(), &i.model, i.user_id) {
            ("ai", Some(model), _) => format!("AI ({})", inline(model)),
            (_, _, Some(user)) => format!("user {user}"),
            (source, _, _) => source.to_owned(),
        };
        let _ = writeln!(md, "### {} · {}\n", who, i.at.to_rfc3339());
        for line in i.text.lines() {
            let _ = writeln!(md, "> {}", line.replace('<', "&lt;").replace('>', "&gt;"));
        }
        let _ = writeln!(md);
    }
    md
}

/// The Markdown report as an HTML page (pulldown-cmark). Links, images and raw HTML are
/// rendered as their text: document and user text can carry no markup into the page.
fn html(title: &str, md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).filter_map(|e| match e {
        Event::Start(Tag::Link { .. } | Tag::Image { .. })
        | Event::End(TagEnd::Link | TagEnd::Image) => None,
        Event::Html(t) | Event::InlineHtml(t) => Some(Event::Text(t)),
        e => Some(e),
    });
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events);
    let title_html = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title_html}</title></head>\n<body>\n{body}</body></html>\n"
    )
}

/// Whether the client asked for HTML: `?format=html`, or an `Accept` that names
/// `text/html` and not `text/markdown`.
fn wants_html(format: Option<&str>, accept: Option<&str>) -> bool {
    match format {
        Some(f) => f == "html",
        None => accept.is_some_and(|a| a.contains("text/html") && !a.contains("text/markdown")),
    }
}

/// The report of an analysis as Markdown (`text/markdown`), or HTML (`?format=html`, or
/// `Accept: text/html`): its state, results per document and overall, and every insight
/// with who wrote it. It can be read at any stage; a finished analysis's report no longer
/// changes except for new insights.
#[utoipa::path(
    get,
    path = "/api/v1/analysis/{id}/report",
    tag = "analysis",
    params(("id" = Uuid, Path, description = "The analysis"), ReportParams),
    responses((status = 200, description = "The report, in Markdown or HTML", content(
        (String = "text/markdown"),
        (String = "text/html"),
    ))),
)]
pub(crate) async fn report(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, ApiError> {
    if params
        .format
        .as_deref()
        .is_some_and(|f| f != "markdown" && f != "html")
    {
        return Err(ApiError::bad_request("format must be markdown or html"));
    }
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let as_html = wants_html(params.format.as_deref(), accept);
    let org = organization(&who)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let a = find(&state, org, path.into_inner()).await?;
    let md = markdown(&a);
    if as_html {
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(html(&a.title, &md)));
    }
    Ok(HttpResponse::Ok()
        .content_type("text/markdown; charset=utf-8")
        .body(md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_html_report_carries_no_markup_from_the_text() {
        let md = format!(
            "# {}\n\n> {}\n",
            inline("<b>Title</b>"),
            "[click](javascript:alert(1)) ![x](http://e.org/x.png)"
        );
        let page = html("<b>Title</b>", &md);
        assert!(
            page.contains("<title>&lt;b&gt;Title&lt;/b&gt;</title>"),
            "{page}"
        );
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("href"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("click"), "{page}");
    }

    #[test]
    fn html_is_chosen_by_format_or_accept() {
        assert!(wants_html(Some("html"), None));
        assert!(!wants_html(Some("markdown"), Some("text/html")));
        assert!(wants_html(None, Some("text/html,application/xhtml+xml")));
        assert!(!wants_html(None, Some("text/markdown, text/html;q=0.5")));
        assert!(!wants_html(None, None));
    }
}
