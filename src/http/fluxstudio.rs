//! FluxStudio teams and projects: an organization's teams with their leads and members, and
//! its projects with a team, members, a status and milestones — what the messaging UI's
//! channel and member pickers need.
//!
//! Served at `/api/v1/teams`, `/api/v1/projects` and, for the FluxStudio frontend, at
//! `/api/teams` and `/api/projects`. Every route belongs to the `fluxstudio` frontend
//! (`X-Frontend-Source: fluxstudio`, enabled for the caller's organization). Writers (admins
//! and members) command, viewers read. Another organization's team or project is 404 on
//! every route. A named user must be a member of the caller's organization, and a named team
//! one of its teams that is not archived (both checked against their actors, not a read
//! model, so a fresh member or team can be named at once).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use universal_events::identity::Frontend;
use universal_events::project::ProjectStatus;
use universal_events::team::TeamRole;
use uuid::Uuid;

use super::command::{
    idempotent, if_match, parse_json, scoped_meta, wait_for_projection, Answer, Page,
};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::project::{Project, ProjectAction, ProjectCommand, ProjectError};
use crate::actors::team::{Team, TeamAction, TeamCommand, TeamError};
use crate::actors::{CommandMeta, CommandReply};
use crate::state::AppState;

const READ_MODEL: &str = "fluxstudio";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/teams")
            .route("", web::post().to(create_team))
            .route("", web::get().to(list_teams))
            .route("/{id}", web::get().to(get_team))
            .route("/{id}", web::patch().to(update_team))
            .route("/{id}/members", web::post().to(add_team_member))
            .route("/{id}/members/{user_id}", web::put().to(change_team_role))
            .route(
                "/{id}/members/{user_id}",
                web::delete().to(remove_team_member),
            )
            .route("/{id}/archive", web::post().to(archive_team)),
    )
    // Every `/projects` route lives in this one scope (a request is matched against the
    // routes of the first scope whose prefix fits), documents and files included.
    .service(
        web::scope("/projects")
            .route("", web::post().to(create_project))
            .route("", web::get().to(list_projects))
            .route("/{id}", web::get().to(get_project))
            .route("/{id}", web::patch().to(update_project))
            .route("/{id}/status", web::put().to(set_project_status))
            .route("/{id}/members", web::post().to(add_project_member))
            .route(
                "/{id}/members/{user_id}",
                web::delete().to(remove_project_member),
            )
            .route("/{id}/milestones", web::post().to(add_milestone))
            .route(
                "/{id}/milestones/{milestone_id}",
                web::delete().to(remove_milestone),
            )
            .route(
                "/{id}/milestones/{milestone_id}/complete",
                web::post().to(complete_milestone),
            )
            .configure(super::documents::configure_projects)
            .configure(super::files::configure_projects),
    );
}

/// The frontend these routes belong to.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum FluxstudioSource {
    Fluxstudio,
}

/// Sent with every team and project request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct FluxstudioHeaders {
    /// Names the frontend: `fluxstudio`, which must be enabled for the caller's organization
    /// (otherwise 403 `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", value_type = FluxstudioSource, inline)]
    pub x_frontend_source: String,
}

fn team_error(e: TeamError) -> ApiError {
    match e {
        TeamError::NotFound => ApiError::not_found("team not found"),
        TeamError::AlreadyExists => ApiError::conflict("team already exists"),
        TeamError::Archived => ApiError::new(
            StatusCode::CONFLICT,
            "team_archived",
            "the team is archived",
        ),
        TeamError::AlreadyMember => ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            "the user is already a member of the team",
        ),
        TeamError::NotMember => ApiError::not_found("the user is not a member of the team"),
        TeamError::Invalid { field, message } => ApiError::validation(field, message),
    }
}

fn project_error(e: ProjectError) -> ApiError {
    match e {
        ProjectError::NotFound => ApiError::not_found("project not found"),
        ProjectError::AlreadyExists => ApiError::conflict("project already exists"),
        ProjectError::Archived => ApiError::new(
            StatusCode::CONFLICT,
            "project_archived",
            "the project is archived; set another status first",
        ),
        ProjectError::AlreadyMember => ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            "the user is already a member of the project",
        ),
        ProjectError::NotMember => ApiError::not_found("the user is not a member of the project"),
        ProjectError::NoMilestone => ApiError::not_found("milestone not found"),
        ProjectError::DuplicateMilestone => ApiError::conflict("milestone id already used"),
        ProjectError::Invalid { field, message } => ApiError::validation(field, message),
    }
}

/// The caller's organization, for a query: FluxStudio enabled.
fn reader(who: &Principal, req: &HttpRequest) -> Result<Uuid, ApiError> {
    who.frontend(req, Frontend::Fluxstudio)
}

/// The caller's organization, for a command: FluxStudio enabled, and a writer's role.
fn writer(who: &Principal, req: &HttpRequest) -> Result<Uuid, ApiError> {
    let org = who.frontend(req, Frontend::Fluxstudio)?;
    who.require_writer()?;
    Ok(org)
}

/// 422 naming `field` unless `user_id` is a member of `org` now.
async fn require_org_member(
    state: &AppState,
    org: Uuid,
    user_id: Uuid,
    field: &str,
) -> Result<(), ApiError> {
    let (_, organization) = state
        .registries
        .organizations
        .inspect(org)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("organization not found")))?;
    if organization.members.contains_key(&user_id) {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            "is not a member of your organization",
        ))
    }
}

/// 422 naming `team_id` unless `team` is a team of `org` that is not archived.
async fn require_team(state: &AppState, org: Uuid, team: Uuid) -> Result<(), ApiError> {
    let (_, t): (i64, Team) = state
        .registries
        .teams
        .inspect(team)
        .await
        .map_err(|e| command_error(e, team_error))?;
    if t.id.is_none() || t.organization_id != Some(org) {
        return Err(ApiError::validation(
            "team_id",
            "is not a team of your organization",
        ));
    }
    if t.archived {
        return Err(ApiError::validation("team_id", "the team is archived"));
    }
    Ok(())
}

async fn run_team(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
    cmd: TeamCommand,
    meta: CommandMeta,
) -> Result<CommandReply<Team>, ApiError> {
    state
        .registries
        .teams
        .execute(id, cmd, if_match(req)?, meta)
        .await
        .map_err(|e| command_error(e, team_error))
}

async fn run_project(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
    cmd: ProjectCommand,
    meta: CommandMeta,
) -> Result<CommandReply<Project>, ApiError> {
    state
        .registries
        .projects
        .execute(id, cmd, if_match(req)?, meta)
        .await
        .map_err(|e| command_error(e, project_error))
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---- teams ----

/// A team as the read model has it.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TeamSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub member_count: i32,
    pub version: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub created_position: i64,
}

const TEAM_COLUMNS: &str = "id, organization_id, name, description, created_by, created_at, \
    archived_at, member_count, version, created_position";

/// A page of teams.
#[derive(utoipa::ToSchema)]
pub struct TeamPage {
    pub items: Vec<TeamSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A team member, with the name the picker shows.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TeamMemberView {
    pub user_id: Uuid,
    /// `lead` or `member`.
    pub role: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
}

/// A team with its members.
#[derive(utoipa::ToSchema)]
pub struct TeamDetail {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub member_count: i32,
    pub version: i64,
    pub members: Vec<TeamMemberView>,
}

/// The role of a team member.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum TeamRoleSchema {
    Lead,
    Member,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTeam {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
    #[schema(max_length = 2000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
}

/// Creates a team in the caller's organization; the caller becomes its lead.
#[utoipa::path(
    post,
    path = "/api/v1/teams",
    tag = "fluxstudio",
    request_body = CreateTeam,
    params(FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = super::schema::CommandResult)),
)]
async fn create_team(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: CreateTeam = parse_json(&body)?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    // With an idempotency key the id follows from it, so a retry names the same team.
    let id = Uuid::new_v5(&meta.command_id, b"team");
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = TeamCommand {
            organization_id: org,
            action: TeamAction::Create {
                team_id: id,
                name: input.name,
                description: input.description,
                created_by: who.user_id,
                at: Utc::now(),
            },
        };
        let reply = run_team(&state, &req, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::CREATED, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListTeams {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// `true`: archived teams only; `false`: active ones only; absent: both.
    archived: Option<bool>,
    /// Only teams this user is a member of.
    member: Option<Uuid>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The organization's teams, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/teams",
    tag = "fluxstudio",
    params(ListTeams, FluxstudioHeaders),
    responses((status = 200, description = "A page of teams", body = TeamPage)),
)]
async fn list_teams(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    q: web::Query<ListTeams>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let page = Page::parse(q.limit, (50, 200), &q.cursor, i64::MAX)?;
    wait_for_projection(&state, READ_MODEL, q.min_position).await?;
    let mut rows: Vec<TeamSummary> = sqlx::query_as(&format!(
        "SELECT {TEAM_COLUMNS} FROM teams t WHERE organization_id = $1 AND created_position < $2 \
         AND ($4::boolean IS NULL OR (archived_at IS NOT NULL) = $4) \
         AND ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM team_members m \
              WHERE m.team_id = t.id AND m.user_id = $5)) \
         ORDER BY created_position DESC LIMIT $3"
    ))
    .bind(org)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(q.archived)
    .bind(q.member)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// One team of the caller's organization with its members (leads first).
#[utoipa::path(
    get,
    path = "/api/v1/teams/{id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The team"), ReadParams, FluxstudioHeaders),
    responses((status = 200, description = "The team; `ETag` is its version", body = TeamDetail)),
)]
async fn get_team(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    wait_for_projection(&state, READ_MODEL, q.min_position).await?;
    let id = path.into_inner();
    let team: TeamSummary =
        super::command::find_in_org(&state.pool, ("teams", TEAM_COLUMNS), org, id, "team").await?;
    let members: Vec<TeamMemberView> = sqlx::query_as(
        "SELECT m.user_id, m.role, u.display_name, u.email FROM team_members m \
         LEFT JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 \
         ORDER BY m.role = 'lead' DESC, m.joined_position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut body = serde_json::to_value(&team).map_err(ApiError::internal)?;
    body["members"] = json!(members);
    Ok(super::command::with_etag(team.version, &body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTeam {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: Option<String>,
    /// `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000, pattern = r"^[^\u0000]*$")]
    description: Option<Option<String>>,
}

/// Renames a team or changes its description.
#[utoipa::path(
    patch,
    path = "/api/v1/teams/{id}",
    tag = "fluxstudio",
    request_body = UpdateTeam,
    params(("id" = Uuid, Path, description = "The team"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Updated", body = super::schema::CommandResult)),
)]
async fn update_team(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: UpdateTeam = parse_json(&body)?;
    let id = path.into_inner();
    team_command(
        &state,
        &req,
        &who,
        org,
        id,
        &body,
        TeamAction::Update {
            name: input.name,
            description: input.description,
        },
    )
    .await
}

async fn team_command(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    org: Uuid,
    id: Uuid,
    body: &[u8],
    action: TeamAction,
) -> Result<HttpResponse, ApiError> {
    let meta = scoped_meta(req, who, org, Some(Frontend::Fluxstudio))?;
    idempotent(&state.pool, req, who, body, || async {
        let cmd = TeamCommand {
            organization_id: org,
            action,
        };
        let reply = run_team(state, req, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddTeamMember {
    /// A member of the caller's organization.
    user_id: Uuid,
    /// `member` when absent.
    #[schema(value_type = Option<TeamRoleSchema>)]
    role: Option<TeamRole>,
}

/// Adds a member of the organization to a team (409 `already_member` if they are one).
#[utoipa::path(
    post,
    path = "/api/v1/teams/{id}/members",
    tag = "fluxstudio",
    request_body = AddTeamMember,
    params(("id" = Uuid, Path, description = "The team"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Added", body = super::schema::CommandResult)),
)]
async fn add_team_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: AddTeamMember = parse_json(&body)?;
    require_org_member(&state, org, input.user_id, "user_id").await?;
    let action = TeamAction::AddMember {
        user_id: input.user_id,
        role: input.role.unwrap_or(TeamRole::Member),
    };
    team_command(&state, &req, &who, org, path.into_inner(), &body, action).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeTeamRole {
    #[schema(value_type = TeamRoleSchema)]
    role: TeamRole,
}

/// Makes a team member a lead or a member.
#[utoipa::path(
    put,
    path = "/api/v1/teams/{id}/members/{user_id}",
    tag = "fluxstudio",
    request_body = ChangeTeamRole,
    params(("id" = Uuid, Path, description = "The team"), ("user_id" = Uuid, Path, description = "The member"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Changed", body = super::schema::CommandResult)),
)]
async fn change_team_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: ChangeTeamRole = parse_json(&body)?;
    let (id, user_id) = path.into_inner();
    let action = TeamAction::ChangeRole {
        user_id,
        role: input.role,
    };
    team_command(&state, &req, &who, org, id, &body, action).await
}

/// Removes a member from a team.
#[utoipa::path(
    delete,
    path = "/api/v1/teams/{id}/members/{user_id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The team"), ("user_id" = Uuid, Path, description = "The member"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Removed", body = super::schema::CommandResult)),
)]
async fn remove_team_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, user_id) = path.into_inner();
    let action = TeamAction::RemoveMember { user_id };
    team_command(&state, &req, &who, org, id, b"", action).await
}

/// Archives a team: it keeps its history and members and takes no more changes.
#[utoipa::path(
    post,
    path = "/api/v1/teams/{id}/archive",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The team"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Archived", body = super::schema::CommandResult)),
)]
async fn archive_team(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let action = TeamAction::Archive { at: Utc::now() };
    team_command(&state, &req, &who, org, path.into_inner(), b"", action).await
}

// ---- projects ----

/// A project's status.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ProjectStatusSchema {
    Planning,
    Active,
    OnHold,
    Completed,
    Archived,
}

/// A project as the read model has it.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProjectSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub team_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    /// `planning`, `active`, `on_hold`, `completed` or `archived`.
    pub status: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub member_count: i32,
    pub milestone_count: i32,
    pub version: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub created_position: i64,
}

const PROJECT_COLUMNS: &str = "id, organization_id, team_id, name, description, status, \
    created_by, created_at, member_count, milestone_count, version, created_position";

/// A page of projects.
#[derive(utoipa::ToSchema)]
pub struct ProjectPage {
    pub items: Vec<ProjectSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A project member.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProjectMemberView {
    pub user_id: Uuid,
    pub display_name: Option<String>,
    pub email: Option<String>,
}

/// A milestone.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MilestoneView {
    pub id: Uuid,
    pub title: String,
    pub due_date: Option<NaiveDate>,
    pub completed: bool,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A project with its members and milestones (in the order they were added).
#[derive(utoipa::ToSchema)]
pub struct ProjectDetail {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub team_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub status: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub member_count: i32,
    pub milestone_count: i32,
    pub version: i64,
    pub members: Vec<ProjectMemberView>,
    pub milestones: Vec<MilestoneView>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
    #[schema(max_length = 5000, pattern = r"^[^\u0000]*$")]
    description: Option<String>,
    /// A team of the caller's organization that is not archived.
    team_id: Option<Uuid>,
    /// `planning` when absent.
    #[schema(value_type = Option<ProjectStatusSchema>)]
    status: Option<ProjectStatus>,
}

/// Creates a project in the caller's organization; the caller becomes its first member.
#[utoipa::path(
    post,
    path = "/api/v1/projects",
    tag = "fluxstudio",
    request_body = CreateProject,
    params(FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = super::schema::CommandResult)),
)]
async fn create_project(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: CreateProject = parse_json(&body)?;
    if let Some(team) = input.team_id {
        require_team(&state, org, team).await?;
    }
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let id = Uuid::new_v5(&meta.command_id, b"project");
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ProjectCommand {
            organization_id: org,
            action: ProjectAction::Create {
                project_id: id,
                name: input.name,
                description: input.description,
                team_id: input.team_id,
                status: input.status.unwrap_or(ProjectStatus::Planning),
                created_by: who.user_id,
                at: Utc::now(),
            },
        };
        let reply = run_project(&state, &req, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::CREATED, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListProjects {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Only the projects of this team.
    team_id: Option<Uuid>,
    /// Only projects with this status.
    #[param(value_type = Option<ProjectStatusSchema>)]
    status: Option<ProjectStatus>,
    /// Only projects this user is a member of.
    member: Option<Uuid>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The organization's projects, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "fluxstudio",
    params(ListProjects, FluxstudioHeaders),
    responses((status = 200, description = "A page of projects", body = ProjectPage)),
)]
async fn list_projects(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    q: web::Query<ListProjects>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let page = Page::parse(q.limit, (50, 200), &q.cursor, i64::MAX)?;
    wait_for_projection(&state, READ_MODEL, q.min_position).await?;
    let mut rows: Vec<ProjectSummary> = sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects p WHERE organization_id = $1 \
         AND created_position < $2 AND ($4::uuid IS NULL OR team_id = $4) \
         AND ($5::text IS NULL OR status = $5) \
         AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM project_members m \
              WHERE m.project_id = p.id AND m.user_id = $6)) \
         ORDER BY created_position DESC LIMIT $3"
    ))
    .bind(org)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(q.team_id)
    .bind(q.status.map(ProjectStatus::as_str))
    .bind(q.member)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

/// One project of the caller's organization with its members and milestones.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The project"), ReadParams, FluxstudioHeaders),
    responses((status = 200, description = "The project; `ETag` is its version", body = ProjectDetail)),
)]
async fn get_project(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    wait_for_projection(&state, READ_MODEL, q.min_position).await?;
    let id = path.into_inner();
    let project: ProjectSummary = super::command::find_in_org(
        &state.pool,
        ("projects", PROJECT_COLUMNS),
        org,
        id,
        "project",
    )
    .await?;
    let members: Vec<ProjectMemberView> = sqlx::query_as(
        "SELECT m.user_id, u.display_name, u.email FROM project_members m \
         LEFT JOIN users u ON u.id = m.user_id WHERE m.project_id = $1 ORDER BY m.joined_position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let milestones: Vec<MilestoneView> = sqlx::query_as(
        "SELECT id, title, due_date, completed_at IS NOT NULL AS completed, completed_at \
         FROM project_milestones WHERE project_id = $1 ORDER BY added_position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut body = serde_json::to_value(&project).map_err(ApiError::internal)?;
    body["members"] = json!(members);
    body["milestones"] = json!(milestones);
    Ok(super::command::with_etag(project.version, &body))
}

async fn project_command(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    (org, id): (Uuid, Uuid),
    body: &[u8],
    action: impl FnOnce(&CommandMeta) -> ProjectAction,
    extra: impl FnOnce(&CommandMeta) -> Option<(&'static str, Value)>,
) -> Result<HttpResponse, ApiError> {
    let meta = scoped_meta(req, who, org, Some(Frontend::Fluxstudio))?;
    let action = action(&meta);
    let extra = extra(&meta);
    idempotent(&state.pool, req, who, body, || async {
        let cmd = ProjectCommand {
            organization_id: org,
            action,
        };
        let reply = run_project(state, req, id, cmd, meta).await?;
        let mut answer = Answer::of(StatusCode::OK, id, &reply);
        if let Some((key, value)) = extra {
            answer.body[key] = value;
        }
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateProject {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: Option<String>,
    /// `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 5000, pattern = r"^[^\u0000]*$")]
    description: Option<Option<String>>,
    /// A team of the organization that is not archived; `null` detaches the project.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    team_id: Option<Option<Uuid>>,
}

/// Changes a project's name, description or team.
#[utoipa::path(
    patch,
    path = "/api/v1/projects/{id}",
    tag = "fluxstudio",
    request_body = UpdateProject,
    params(("id" = Uuid, Path, description = "The project"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Updated", body = super::schema::CommandResult)),
)]
async fn update_project(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: UpdateProject = parse_json(&body)?;
    if let Some(Some(team)) = input.team_id {
        require_team(&state, org, team).await?;
    }
    let action = ProjectAction::Update {
        name: input.name,
        description: input.description,
        team_id: input.team_id,
    };
    let key = (org, path.into_inner());
    project_command(&state, &req, &who, key, &body, |_| action, |_| None).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetStatus {
    #[schema(value_type = ProjectStatusSchema)]
    status: ProjectStatus,
}

/// Sets a project's status; `archived` freezes it until another status is set.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{id}/status",
    tag = "fluxstudio",
    request_body = SetStatus,
    params(("id" = Uuid, Path, description = "The project"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Set", body = super::schema::CommandResult)),
)]
async fn set_project_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: SetStatus = parse_json(&body)?;
    let action = ProjectAction::SetStatus {
        status: input.status,
    };
    let key = (org, path.into_inner());
    project_command(&state, &req, &who, key, &body, |_| action, |_| None).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddProjectMember {
    /// A member of the caller's organization.
    user_id: Uuid,
}

/// Adds a member of the organization to a project (409 `already_member` if they are one).
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/members",
    tag = "fluxstudio",
    request_body = AddProjectMember,
    params(("id" = Uuid, Path, description = "The project"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Added", body = super::schema::CommandResult)),
)]
async fn add_project_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: AddProjectMember = parse_json(&body)?;
    require_org_member(&state, org, input.user_id, "user_id").await?;
    let action = ProjectAction::AddMember {
        user_id: input.user_id,
    };
    let key = (org, path.into_inner());
    project_command(&state, &req, &who, key, &body, |_| action, |_| None).await
}

/// Removes a member from a project.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}/members/{user_id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The project"), ("user_id" = Uuid, Path, description = "The member"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Removed", body = super::schema::CommandResult)),
)]
async fn remove_project_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, user_id) = path.into_inner();
    let action = ProjectAction::RemoveMember { user_id };
    project_command(&state, &req, &who, (org, id), b"", |_| action, |_| None).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddMilestone {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    title: String,
    /// A calendar date, `YYYY-MM-DD`.
    due_date: Option<NaiveDate>,
}

/// Adds a milestone; the answer names its `milestone_id`.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/milestones",
    tag = "fluxstudio",
    request_body = AddMilestone,
    params(("id" = Uuid, Path, description = "The project"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Added; `milestone_id` names it", body = MilestoneAdded)),
)]
async fn add_milestone(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: AddMilestone = parse_json(&body)?;
    // With an idempotency key the id follows from it, so a retry names the same milestone.
    let milestone = |m: &CommandMeta| Uuid::new_v5(&m.command_id, b"milestone");
    project_command(
        &state,
        &req,
        &who,
        (org, path.into_inner()),
        &body,
        |m| ProjectAction::AddMilestone {
            milestone_id: milestone(m),
            title: input.title,
            due_date: input.due_date,
        },
        |m| Some(("milestone_id", json!(milestone(m)))),
    )
    .await
}

/// The answer to adding a milestone.
#[derive(utoipa::ToSchema)]
pub struct MilestoneAdded {
    /// The project.
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    pub milestone_id: Uuid,
}

/// Marks a milestone completed (again: nothing changes).
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/milestones/{milestone_id}/complete",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The project"), ("milestone_id" = Uuid, Path, description = "The milestone"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Completed", body = super::schema::CommandResult)),
)]
async fn complete_milestone(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, milestone_id) = path.into_inner();
    let action = ProjectAction::CompleteMilestone {
        milestone_id,
        at: Utc::now(),
    };
    project_command(&state, &req, &who, (org, id), b"", |_| action, |_| None).await
}

/// Removes a milestone.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}/milestones/{milestone_id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The project"), ("milestone_id" = Uuid, Path, description = "The milestone"), FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Removed", body = super::schema::CommandResult)),
)]
async fn remove_milestone(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, milestone_id) = path.into_inner();
    let action = ProjectAction::RemoveMilestone { milestone_id };
    project_command(&state, &req, &who, (org, id), b"", |_| action, |_| None).await
}
