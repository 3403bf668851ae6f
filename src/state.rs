//! What every handler, gateway and worker can reach: [`AppState`], built once by
//! `startup` (the composition root) and handed to each of them behind `web::Data`.

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::actors::{Registry, RuntimeConfig};
use crate::config::Config;
use crate::gateways::Gateways;
use crate::http::guard::AuthState;
use crate::identity::access::Access;
use crate::projections::Progress;
use crate::store::EventStore;

/// Declares [`Registries`]: a new entity kind is one line here.
macro_rules! registries {
    ($($(#[doc = $doc:expr])* $name:ident: $kind:ty,)*) => {
        /// The actor registries of every entity kind, each spawning the actor of an id on
        /// first use.
        pub struct Registries {
            $($(#[doc = $doc])* pub $name: Registry<$kind>,)*
        }

        impl Registries {
            pub fn new(store: &Arc<dyn EventStore>, runtime: &RuntimeConfig) -> Self {
                Self { $($name: Registry::new(store.clone(), runtime.clone()),)* }
            }
        }
    };
}

registries! {
    /// CityPulse buildings, their sensors and readings.
    buildings: crate::actors::building::Building,
    /// Accounts and their sessions.
    users: crate::actors::user::User,
    /// Organizations, their members and frontends.
    organizations: crate::actors::organization::Organization,
    /// FluxStudio channels and direct conversations.
    channels: crate::actors::channel::Channel,
    /// Users' notification inboxes.
    inboxes: crate::actors::channel::Inbox,
    /// FluxStudio teams.
    teams: crate::actors::team::Team,
    /// FluxStudio projects.
    projects: crate::actors::project::Project,
    /// Swarm tasks: Quantum runs, Velocity batches, analyses, agent executions.
    swarm_tasks: crate::actors::swarm_task::SwarmTask,
    /// The migration feature flags of the legacy routes (one actor per route).
    flags: crate::actors::flag::Flag,
    /// FluxStudio collaborative documents (Yjs), their grants and updates.
    documents: crate::actors::document::Document,
    /// FluxStudio files: versions, grants and share links (content is in `files::Storage`).
    files: crate::actors::file::File,
}

/// What every handler can reach, behind cheap handles.
pub struct AppState {
    /// The actors of every entity kind (one registry per kind).
    pub registries: Registries,
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub auth: AuthState,
    pub progress: Progress,
    /// The in-memory fan-out that live socket subscriptions follow.
    pub live: Arc<crate::store::LiveFeed>,
    /// Who may do what now, kept current from the log (see `access`).
    pub access: Arc<Access>,
    /// The AI model providers of this process, each behind timeouts, retries and a breaker.
    pub providers: crate::providers::Providers,
    /// FlowMind chat sessions and the reply workers of this process.
    pub chat: crate::tasks::chat::Chat,
    /// The connection core shared by every socket endpoint (limits, timeouts).
    pub gateways: Gateways,
    /// The Pusher Channels hub: `state.pusher.publish(channel, event, &data)` reaches the
    /// subscribers of every process (see `gateways::pusher`).
    pub pusher: Arc<crate::gateways::pusher::Hub>,
    /// This process's recent HTTP traffic (Socket.IO `/auth` shows it).
    pub traffic: crate::http::traffic::Traffic,
    /// Typing and presence of the messaging sockets, shared by every process.
    pub signals: Arc<crate::gateways::signals::Signals>,
    pub started: Instant,
    pub config: Config,
    /// Verifies Google ID tokens for `POST /api/auth/google`.
    pub google: Arc<crate::identity::google::GoogleVerifier>,
    /// This process's part in running swarm tasks (see `tasks`).
    pub swarm: crate::tasks::Scheduler,
    /// This process's proxy to the legacy backend and its error windows.
    pub legacy: Arc<crate::http::legacy::Legacy>,
    /// This process's provider breakers as the deployment sees them (`agents::breakers`).
    pub breakers: Arc<crate::agents::breakers::BreakerSync>,
    /// Where user-supplied URLs may lead (`SWARM_HTTP_ALLOWLIST`, see `outbound`).
    pub outbound: Arc<crate::outbound::AllowList>,
    /// The collaborative documents open on this process (y-websocket, see `gateways::collab`).
    pub collab: Arc<crate::gateways::collab::Collab>,
    /// FluxStudio file content, share-link key and limits (see `files`).
    pub files: crate::files::Files,
}
