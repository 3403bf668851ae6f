//! FluxStudio's collaborative documents over the y-websocket protocol:
//! `GET /collab/{document}` and `GET /api/v1/collab/{document}`.
//!
//! Clients are Yjs 13 with y-websocket 2.x or 3.x in their default settings:
//! `new WebsocketProvider(url + '/collab', documentId, ydoc, { params: { token } })`. The room
//! name is the document's id. One y-protocols message per binary frame: `0` sync (step 1,
//! step 2, update), `1` awareness, `2` auth (`[2,0,reason]`: permission denied), `3` query
//! awareness. Encoding and the CRDT are `yrs` (its `sync` module).
//!
//! **A room per open document and process.** The first connection loads the document
//! ([`content::load`]: latest snapshot plus the tail of `document-{id}`); a document that
//! does not load refuses every connection (`[2,0,"document unavailable: …"]`, close 1011)
//! instead of serving an empty document that clients would then write into. The last
//! connection to leave flushes and unloads the room.
//!
//! **Handshake and echo.** On connect the server sends its step 1 and the awareness states it
//! knows, and answers the client's step 1 with step 2. Updates and awareness go to every
//! connection of the document on every process, the sender included (the client closes a
//! socket that is silent for 30 s; the echo of its own awareness renewals keeps it open).
//!
//! **Persistence.** Edits are applied to the room's document and sent to its connections at
//! once. The updates that arrive within `COLLAB_FLUSH_MS` of the first are merged
//! (`yrs::merge_updates_v1`) and appended as one `DocumentUpdated` event with their authors,
//! through the document decider. Every `COLLAB_SNAPSHOT_EVERY` stream versions a snapshot of
//! that exact version is saved from the log. A process killed before a flush loses at most
//! that window; the clients still hold those edits and give them back when they reconnect
//! (their step 2 answers the server's step 1).
//!
//! **Across processes.** Each room follows the log's live feed for its stream: an update
//! written by another process is applied and, when it brings anything new, sent to this
//! process's connections. Awareness (cursors, names) is ephemeral and travels like typing
//! indicators (`signals`, PostgreSQL NOTIFY), never stored.
//!
//! **Authorization** is that of the project routes, checked again on every change: the
//! caller's session alive, a member of the document's organization with FluxStudio enabled.
//! Editors are organization admins, and project members (or holders of an `edit` grant)
//! whose organization role may write. Viewers who are project members, and holders of a
//! `view` or `comment` grant, are read-only: their step 1 is answered, their updates are
//! dropped, and the first dropped update is answered `[2,0,"read-only: …"]` (the REST
//! document answers `access: "read"` too). Anyone else gets `[2,0,"permission denied"]` and
//! a close. Logout, removal from the organization (access view) or the project (the room's
//! follow of the project stream), and a revoked grant close the socket at once.
//!
//! **Limits.** The frame limit (`COLLAB_MAX_FRAME_BYTES`, checked at each frame header),
//! `COLLAB_MAX_DOCUMENT_BYTES` (an update past it is refused with `[2,0,reason]`),
//! `COLLAB_MAX_CONNECTIONS_PER_DOCUMENT` (close 1013), `COLLAB_RATE_LIMIT_PER_MINUTE` (close
//! 1008: the client reconnects and resyncs, nothing is lost), the unauthenticated deadline
//! (`WS_AUTH_TIMEOUT`, for a socket without a token that must send
//! `{"type":"auth","token"}` as a text frame) and the shared connection cap.

pub mod content;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message as WsMessage};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, watch, Notify, OnceCell};
use universal_events::document::{DocumentAccess, DocumentEvent};
use universal_events::identity::{Frontend, Role};
use universal_events::project::ProjectEvent;
use universal_events::EventFamily;
use uuid::Uuid;
use yrs::block::ClientID;
use yrs::sync::{Awareness, AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

use crate::actors::document::{Document, DocumentAction, DocumentCommand};
use crate::actors::CommandMeta;
use crate::config::Config;
use crate::gateways::{self, MessageLimit};
use crate::http::guard::{principal_from_token, Principal};
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{Filter, RecordedEvent, Subscription};

/// Messages waiting for one connection; a connection further behind is closed (it
/// reconnects and resyncs).
const QUEUE: usize = 1024;
/// A client that takes no message for this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings of the collaboration gateway.
#[derive(Debug, Clone)]
pub struct Settings {
    pub flush: Duration,
    pub snapshot_every: i64,
    pub max_document_bytes: usize,
    pub max_frame: usize,
    pub max_connections_per_document: usize,
    pub messages_per_minute: u32,
}

impl Settings {
    pub fn new(config: &Config) -> Self {
        Self {
            flush: Duration::from_millis(config.collab_flush_ms),
            snapshot_every: config.collab_snapshot_every,
            max_document_bytes: config.collab_max_document_bytes,
            max_frame: config.collab_max_frame_bytes,
            max_connections_per_document: config.collab_max_connections_per_document,
            messages_per_minute: config.collab_rate_limit_per_minute,
        }
    }
}

/// The documents open on this process.
pub struct Collab {
    rooms: Mutex<HashMap<Uuid, Arc<Room>>>,
    pub settings: Settings,
    open: AtomicUsize,
    /// Tells this process's awareness signals from other processes'.
    process: Uuid,
}

impl Collab {
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            rooms: Mutex::new(HashMap::new()),
            settings: Settings::new(config),
            open: AtomicUsize::new(0),
            process: Uuid::new_v4(),
        })
    }

    /// Open collaboration connections of this process.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Documents loaded in this process.
    pub fn loaded_documents(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Takes a place in the document's room (made if it is not open here), or `None` when
    /// the room holds its maximum of connections.
    fn enter(&self, id: Uuid, meta: &Document) -> Option<Arc<Room>> {
        let mut rooms = self.rooms.lock().ok()?;
        let room = rooms
            .entry(id)
            .or_insert_with(|| Room::new(id, meta, self.settings.max_document_bytes))
            .clone();
        // Connections are counted under the rooms lock, so a room is never unloaded while
        // someone enters it.
        let present = room.members.load(Ordering::Acquire);
        if present >= self.settings.max_connections_per_document {
            if present == 0 {
                rooms.remove(&id);
            }
            return None;
        }
        room.members.fetch_add(1, Ordering::AcqRel);
        Some(room)
    }

    /// Writes what every open document has pending (at shutdown).
    pub async fn flush_all(&self, state: &web::Data<AppState>) {
        let rooms: Vec<Arc<Room>> = match self.rooms.lock() {
            Ok(r) => r.values().cloned().collect(),
            Err(_) => return,
        };
        for room in rooms {
            room.flush(state).await;
        }
    }

    /// Leaves the room; the last one out unloads it (after a final flush).
    fn leave(&self, state: &web::Data<AppState>, room: &Arc<Room>) {
        let last = match self.rooms.lock() {
            Ok(mut rooms) => {
                let left = room.members.fetch_sub(1, Ordering::AcqRel) - 1;
                if left == 0 && rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                    rooms.remove(&room.id);
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if last {
            let room = room.clone();
            let state = state.clone();
            actix_web::rt::spawn(async move { room.unload(&state).await });
        }
    }
}

/// Who may do what in a document, as the room knows it.
#[derive(Debug, Clone)]
struct RoomAuth {
    organization_id: Uuid,
    members: BTreeSet<Uuid>,
    grants: BTreeMap<Uuid, DocumentAccess>,
}

/// What a caller may do with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    Edit,
    Read,
}

/// The rights of `who` in a document of `auth`, or why none.
fn rights_in(who: &Principal, auth: &RoomAuth) -> Result<Rights, String> {
    let org = gateways::authorize_frontend(who, Frontend::Fluxstudio).map_err(|(_, why)| why)?;
    if org != auth.organization_id {
        return Err("permission denied".into());
    }
    let writer = who.role.is_some_and(|r| r.can_write());
    if who.role == Some(Role::Admin) {
        return Ok(Rights::Edit);
    }
    let member = auth.members.contains(&who.user_id);
    let grant = auth.grants.get(&who.user_id).copied();
    match (member, grant) {
        (true, _) | (_, Some(DocumentAccess::Edit)) if writer => Ok(Rights::Edit),
        (true, _) | (_, Some(_)) => Ok(Rights::Read),
        _ => Err("permission denied".into()),
    }
}

impl Rights {
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::Edit => "edit",
            Rights::Read => "read",
        }
    }
}

/// The document `id` and what `who` may do with it, from its actor and its project's (as
/// the socket decides): 404 for a document of another organization or none, 403 for a
/// caller who may not open it.
pub async fn rights_of(
    state: &AppState,
    who: &Principal,
    id: Uuid,
) -> Result<(i64, Document, Rights), ApiError> {
    let not_found = || ApiError::not_found("document not found");
    let (version, document) = state
        .registries
        .documents
        .inspect(id)
        .await
        .map_err(|e| crate::http::error::command_error(e, |_| not_found()))?;
    if document.id.is_none() || document.organization_id != who.organization_id {
        return Err(not_found());
    }
    let project_id = document.project_id.unwrap_or_default();
    let (_, project) = state
        .registries
        .projects
        .inspect(project_id)
        .await
        .map_err(|e| crate::http::error::command_error(e, |_| not_found()))?;
    let auth = RoomAuth {
        organization_id: document.organization_id.unwrap_or_default(),
        members: project.members,
        grants: document.grants.clone(),
    };
    let rights = rights_in(who, &auth).map_err(|why| {
        ApiError::forbidden(
            "forbidden",
            format!("{why}: open a document as a member of its project or with a grant"),
        )
    })?;
    Ok((version, document, rights))
}

/// A document open on this process, with its connections.
pub struct Room {
    id: Uuid,
    /// Connections in the room (counted under the rooms lock).
    members: AtomicUsize,
    loaded: OnceCell<Result<(), String>>,
    inner: Mutex<Inner>,
    auth: Mutex<RoomAuth>,
    /// Messages for every connection of the room (updates, awareness), already encoded.
    tx: broadcast::Sender<Bytes>,
    /// Bumped when the project's members or the document's grants change.
    rights: watch::Sender<u64>,
    /// Wakes the flusher when the first update of a batch arrives.
    wake: Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    awareness: Awareness,
    /// Updates not yet in the log, with their authors.
    pending: Vec<Vec<u8>>,
    authors: BTreeSet<Uuid>,
    /// The size of the document's state, measured at load and at each limit check, plus
    /// what was added since (an upper bound).
    bytes: usize,
    max_bytes: usize,
    /// The stream version the last flush wrote.
    version: i64,
}

/// Why an edit was not taken.
enum EditError {
    TooLarge(String),
    Malformed(String),
}

impl Room {
    fn new(id: Uuid, meta: &Document, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            id,
            members: AtomicUsize::new(0),
            loaded: OnceCell::new(),
            inner: Mutex::new(Inner {
                awareness: Awareness::new(yrs::Doc::new()),
                pending: Vec::new(),
                authors: BTreeSet::new(),
                bytes: 0,
                max_bytes,
                version: 0,
            }),
            auth: Mutex::new(RoomAuth {
                organization_id: meta.organization_id.unwrap_or_default(),
                members: BTreeSet::new(),
                grants: meta.grants.clone(),
            }),
            tx: broadcast::channel(QUEUE).0,
            rights: watch::channel(0).0,
            wake: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Loads the document once (the first connection does it; the others wait for it).
    async fn ready(self: &Arc<Self>, state: &web::Data<AppState>) -> Result<(), String> {
        self.loaded
            .get_or_init(|| async {
                self.load(state).await.inspect_err(|e| {
                    tracing::warn!(document = %self.id, error = %e, "a document did not load; refusing its connections");
                })
            })
            .await
            .clone()
    }

    async fn load(self: &Arc<Self>, state: &web::Data<AppState>) -> Result<(), String> {
        let head = state
            .store
            .head_position()
            .await
            .map_err(|e| format!("the event store is unavailable: {e}"))?;
        let (_, document) = state
            .registries
            .documents
            .inspect(self.id)
            .await
            .map_err(|e| e.to_string())?;
        let project_id = document.project_id.ok_or("no such document")?;
        let (_, project) = state
            .registries
            .projects
            .inspect(project_id)
            .await
            .map_err(|e| e.to_string())?;
        let loaded = content::load(state.store.as_ref(), &state.pool, self.id, None)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = content::encode(&loaded.doc).len();
        if let Ok(mut auth) = self.auth.lock() {
            auth.members = project.members.clone();
            auth.grants = document.grants.clone();
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner.awareness = Awareness::new(loaded.doc);
            inner.bytes = bytes;
            inner.version = loaded.version;
        }
        let mut tasks = vec![
            actix_web::rt::spawn(follow(self.clone(), state.clone(), head, project_id)),
            actix_web::rt::spawn(flusher(self.clone(), state.clone())),
            actix_web::rt::spawn(awareness_signals(self.clone(), state.clone())),
        ];
        if let Ok(mut t) = self.tasks.lock() {
            t.append(&mut tasks);
        }
        Ok(())
    }

    /// Stops following the log and writes what is pending.
    async fn unload(&self, state: &web::Data<AppState>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        for _ in 0..5 {
            if self.flush(state).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Applies a client's update; it goes to every connection and into the next flush.
    fn edit(&self, update: &[u8], author: Uuid) -> Result<(), EditError> {
        let mut inner = self.inner.lock().map_err(|_| {
            EditError::Malformed("the document is unavailable after an internal error".into())
        })?;
        if inner.bytes + update.len() > inner.max_bytes {
            inner.bytes = content::encode(inner.awareness.doc()).len();
            if inner.bytes + update.len() > inner.max_bytes {
                return Err(EditError::TooLarge(format!(
                    "the document is at its size limit of {} bytes (COLLAB_MAX_DOCUMENT_BYTES); \
                     this update was refused",
                    inner.max_bytes
                )));
            }
        }
        let changed =
            content::apply(inner.awareness.doc(), update).map_err(EditError::Malformed)?;
        if !changed {
            return Ok(());
        }
        inner.bytes += update.len();
        inner.pending.push(update.to_vec());
        inner.authors.insert(author);
        drop(inner);
        let _ = self
            .tx
            .send(encode(&Message::Sync(SyncMessage::Update(update.to_vec()))));
        self.wake.notify_one();
        Ok(())
    }

    /// Appends what is pending as one event; `false` when that failed (it stays pending).
    async fn flush(&self, state: &web::Data<AppState>) -> bool {
        let (updates, authors) = match self.inner.lock() {
            Ok(mut inner) => (
                std::mem::take(&mut inner.pending),
                std::mem::take(&mut inner.authors),
            ),
            Err(_) => return true,
        };
        if updates.is_empty() {
            return true;
        }
        let merged = match yrs::merge_updates_v1(&updates) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(document = %self.id, error = %e, "updates did not merge; writing them one by one");
                return self.write_each(state, updates, authors).await;
            }
        };
        let n = updates.len() as u32;
        match self
            .append(state, merged, authors.iter().copied().collect(), n)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(document = %self.id, error = %e, "flushing a document failed; retrying");
                if let Ok(mut inner) = self.inner.lock() {
                    let mut back = updates;
                    back.append(&mut inner.pending);
                    inner.pending = back;
                    inner.authors.extend(authors);
                }
                false
            }
        }
    }

    async fn write_each(
        &self,
        state: &web::Data<AppState>,
        updates: Vec<Vec<u8>>,
        authors: BTreeSet<Uuid>,
    ) -> bool {
        let authors: Vec<Uuid> = authors.into_iter().collect();
        for u in updates {
            if let Err(e) = self.append(state, u, authors.clone(), 1).await {
                tracing::warn!(document = %self.id, error = %e, "an update was not written");
            }
        }
        true
    }

    async fn append(
        &self,
        state: &web::Data<AppState>,
        update: Vec<u8>,
        authors: Vec<Uuid>,
        merged: u32,
    ) -> Result<(), String> {
        let org = self.auth.lock().map_err(|e| e.to_string())?.organization_id;
        let mut meta = CommandMeta::new();
        meta.organization_id = Some(org);
        meta.user_id = authors.first().copied();
        meta.frontend = Some(Frontend::Fluxstudio.as_str().to_owned());
        let reply = state
            .registries
            .documents
            .execute(
                self.id,
                DocumentCommand {
                    organization_id: org,
                    action: DocumentAction::Update {
                        update,
                        authors,
                        merged,
                        restored_from: None,
                    },
                },
                None,
                meta,
            )
            .await
            .map_err(|e| e.to_string())?;
        let every = state.collab.settings.snapshot_every;
        let before = match self.inner.lock() {
            Ok(mut inner) => std::mem::replace(&mut inner.version, reply.version),
            Err(_) => reply.version,
        };
        if every > 0 && reply.version / every > before / every {
            let (state, id, version) = (state.clone(), self.id, reply.version);
            actix_web::rt::spawn(async move {
                if let Err(e) =
                    content::snapshot(state.store.as_ref(), &state.pool, id, version).await
                {
                    tracing::warn!(document = %id, error = %e, "a document snapshot failed");
                }
            });
        }
        Ok(())
    }

    /// An event of the document's or the project's stream, from the log.
    fn on_log(&self, e: &RecordedEvent) {
        match crate::store::category_of(&e.stream_id) {
            "document" => {
                let Ok(event) = DocumentEvent::decode_ref(&e.event_type, e.schema_version, &e.data)
                else {
                    return;
                };
                match event {
                    DocumentEvent::DocumentUpdated(_) => {
                        let Ok(update) = content::update_of(&e.data) else {
                            return;
                        };
                        let changed = match self.inner.lock() {
                            Ok(mut inner) => {
                                let changed = content::apply(inner.awareness.doc(), &update);
                                if matches!(changed, Ok(true)) {
                                    inner.bytes += update.len();
                                }
                                changed
                            }
                            Err(_) => return,
                        };
                        match changed {
                            Ok(true) => {
                                let _ = self
                                    .tx
                                    .send(encode(&Message::Sync(SyncMessage::Update(update))));
                            }
                            Ok(false) => {}
                            Err(why) => {
                                tracing::warn!(document = %self.id, version = e.version, %why, "a stored update did not apply")
                            }
                        }
                    }
                    DocumentEvent::DocumentGranted(g) => {
                        if let Ok(mut auth) = self.auth.lock() {
                            auth.grants.insert(g.user_id, g.access);
                        }
                        self.rights.send_modify(|n| *n += 1);
                    }
                    DocumentEvent::DocumentGrantRevoked(g) => {
                        if let Ok(mut auth) = self.auth.lock() {
                            auth.grants.remove(&g.user_id);
                        }
                        self.rights.send_modify(|n| *n += 1);
                    }
                    DocumentEvent::DocumentCreated(_) => {}
                }
            }
            "project" => {
                let Ok(event) = ProjectEvent::decode_ref(&e.event_type, e.schema_version, &e.data)
                else {
                    return;
                };
                let changed = match (event, self.auth.lock()) {
                    (ProjectEvent::ProjectMemberAdded(m), Ok(mut auth)) => {
                        auth.members.insert(m.user_id)
                    }
                    (ProjectEvent::ProjectMemberRemoved(m), Ok(mut auth)) => {
                        auth.members.remove(&m.user_id)
                    }
                    _ => false,
                };
                if changed {
                    self.rights.send_modify(|n| *n += 1);
                }
            }
            _ => {}
        }
    }

    /// Applies an awareness message (from a connection or another process) and sends it to
    /// this process's connections; returns the client ids it names.
    fn on_awareness(&self, update: AwarenessUpdate) -> Vec<ClientID> {
        let ids: Vec<ClientID> = update.clients.keys().copied().collect();
        let frame = encode(&Message::Awareness(update.clone()));
        if let Ok(mut inner) = self.inner.lock() {
            let _ = inner.awareness.apply_update(update);
        }
        let _ = self.tx.send(frame);
        ids
    }

    /// Removes the awareness states of a connection that left, here and everywhere.
    async fn forget(&self, state: &AppState, ids: &HashSet<ClientID>) {
        if ids.is_empty() {
            return;
        }
        let update = match self.inner.lock() {
            Ok(mut inner) => {
                for id in ids {
                    inner.awareness.remove_state(*id);
                }
                inner.awareness.update_with_clients(ids.iter().copied())
            }
            Err(_) => return,
        };
        let Ok(update) = update else { return };
        let frame = encode(&Message::Awareness(update));
        let _ = self.tx.send(frame.clone());
        publish_awareness(state, self.id, &frame).await;
    }

    fn auth(&self) -> Option<RoomAuth> {
        self.auth.lock().ok().map(|a| a.clone())
    }

    /// The server's step 1 and the awareness states it knows, for a new connection.
    fn greeting(&self) -> Vec<Bytes> {
        let Ok(inner) = self.inner.lock() else {
            return vec![];
        };
        let sv = inner.awareness.doc().transact().state_vector();
        let mut out = vec![encode(&Message::Sync(SyncMessage::SyncStep1(sv)))];
        if let Ok(update) = inner.awareness.update() {
            if !update.clients.is_empty() {
                out.push(encode(&Message::Awareness(update)));
            }
        }
        out
    }

    fn step2(&self, sv: &yrs::StateVector) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        let diff = inner
            .awareness
            .doc()
            .transact()
            .encode_state_as_update_v1(sv);
        Some(encode(&Message::Sync(SyncMessage::SyncStep2(diff))))
    }

    fn awareness_now(&self) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        inner
            .awareness
            .update()
            .ok()
            .map(|u| encode(&Message::Awareness(u)))
    }
}

fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

/// Follows the document's and the project's streams from `after`.
async fn follow(room: Arc<Room>, state: web::Data<AppState>, after: i64, project: Uuid) {
    let document_stream = content::stream(room.id);
    let project_stream = format!("project-{project}");
    let filter = Filter {
        categories: Some(vec!["document".into(), "project".into()]),
        ..Filter::default()
    };
    let gate: crate::store::subscription::Gate =
        Arc::new(move |e| e.stream_id == document_stream || e.stream_id == project_stream);
    let mut sub = Subscription::new(state.store.clone(), after, filter)
        .with_live_feed(state.live.clone())
        .with_gate(gate);
    loop {
        match sub.next().await {
            Ok(e) => room.on_log(&e),
            Err(e) => {
                tracing::warn!(error = %e, "following a document; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Writes the updates that arrived within one flush interval of the first, as one event.
async fn flusher(room: Arc<Room>, state: web::Data<AppState>) {
    let every = state.collab.settings.flush;
    loop {
        room.wake.notified().await;
        tokio::time::sleep(every).await;
        if !room.flush(&state).await {
            tokio::time::sleep(Duration::from_millis(500)).await;
            room.wake.notify_one();
        }
    }
}

/// Awareness messages of this document from other processes.
async fn awareness_signals(room: Arc<Room>, state: web::Data<AppState>) {
    let mut rx = state.signals.subscribe();
    let me = state.collab.process.to_string();
    let document = room.id.to_string();
    loop {
        let signal = match rx.recv().await {
            Ok(s) => s,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if signal["type"] != "collab_awareness"
            || signal["document"] != document.as_str()
            || signal["process"] == me.as_str()
        {
            continue;
        }
        let Some(frame) = signal["message"]
            .as_str()
            .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
        else {
            continue;
        };
        if let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) {
            room.on_awareness(update);
        }
    }
}

async fn publish_awareness(state: &AppState, document: Uuid, frame: &[u8]) {
    state
        .signals
        .publish(&json!({
            "type": "collab_awareness",
            "document": document,
            "process": state.collab.process,
            "message": base64::engine::general_purpose::STANDARD.encode(frame),
        }))
        .await;
}

#[derive(Deserialize)]
pub struct Query {
    pub token: Option<String>,
}

/// `GET /collab/{document}`: upgrades to the y-websocket protocol.
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<Query>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.websocket_enabled {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "feature_disabled",
            "WebSockets are disabled on this server",
        ));
    }
    let id = Uuid::parse_str(path.as_str())
        .map_err(|_| ApiError::not_found("no such document: the room name is a document id"))?;
    let token = query.token.clone().or_else(|| {
        req.headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_owned)
    });
    let slot = state.gateways.admit()?;
    let max_frame = state.collab.settings.max_frame;
    let (response, session, stream) = gateways::upgrade(&req, body, max_frame).await?;
    actix_web::rt::spawn(async move {
        let _slot = slot;
        state.collab.open.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("ub_collab_connections").increment(1.0);
        Connection {
            state: state.clone(),
            session,
            id,
            rights: Rights::Read,
            awareness_ids: HashSet::new(),
            told_read_only: false,
        }
        .run(stream, token)
        .await;
        state.collab.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("ub_collab_connections").decrement(1.0);
    });
    Ok(response)
}

struct Connection {
    state: web::Data<AppState>,
    session: actix_ws::Session,
    id: Uuid,
    rights: Rights,
    /// The awareness client ids this connection has spoken for.
    awareness_ids: HashSet<ClientID>,
    told_read_only: bool,
}

/// A close frame; its reason is cut to the 123 bytes a close frame can carry (the full
/// reason goes before it in the `[2,0,reason]` message).
fn close(code: CloseCode, description: &str) -> Option<CloseReason> {
    let mut end = description.len().min(123);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    Some(CloseReason {
        code,
        description: Some(description[..end].to_owned()),
    })
}

fn denied(reason: &str) -> Bytes {
    encode(&Message::Auth(Some(reason.to_owned())))
}

#[derive(Deserialize)]
struct AuthFrame {
    token: String,
}

/// How one connection ends: the close frame, and for a refusal the auth message before it.
type End = (Option<Bytes>, Option<CloseReason>);

impl Connection {
    async fn run(mut self, mut stream: actix_ws::MessageStream, token: Option<String>) {
        let (denial, reason) = match self.serve(&mut stream, token).await {
            Ok(reason) => (None, reason),
            Err((denial, reason)) => (denial, reason),
        };
        if let Some(d) = denial {
            let _ = self.session.binary(d).await;
        }
        let _ = self.session.close(reason).await;
    }

    /// Authenticates, joins and serves; `Err` is a refusal.
    async fn serve(
        &mut self,
        stream: &mut actix_ws::MessageStream,
        token: Option<String>,
    ) -> Result<Option<CloseReason>, End> {
        let mut early_step1: Option<yrs::StateVector> = None;
        let token = match token {
            Some(t) => t,
            None => self.await_token(stream, &mut early_step1).await?,
        };
        let principal = principal_from_token(&self.state, &token)
            .await
            .map_err(|e| {
                (
                    Some(denied(&e.message)),
                    close(CloseCode::Policy, &e.message),
                )
            })?;
        // What the document is, without loading its content: a caller of another
        // organization must not make this process load anything.
        let meta = match self.state.registries.documents.inspect(self.id).await {
            Ok((_, d)) if d.id.is_some() => d,
            Ok(_) => return Err(refusal("permission denied")),
            Err(e) => return Err(unavailable(&e.to_string())),
        };
        if meta.organization_id != principal.organization_id {
            return Err(refusal("permission denied"));
        }
        let collab = self.state.collab.clone();
        let Some(room) = collab.enter(self.id, &meta) else {
            let why = format!(
                "the document has its maximum of {} connections; retry later",
                collab.settings.max_connections_per_document
            );
            return Err((Some(denied(&why)), close(CloseCode::Again, &why)));
        };
        let served = self.in_room(&room, stream, principal, early_step1).await;
        room.forget(&self.state, &self.awareness_ids).await;
        collab.leave(&self.state, &room);
        served
    }

    /// Waits (at most the authentication deadline) for `{"type":"auth","token"}` in a text
    /// frame, remembering the client's step 1 to answer it once authenticated.
    async fn await_token(
        &mut self,
        stream: &mut actix_ws::MessageStream,
        step1: &mut Option<yrs::StateVector>,
    ) -> Result<String, End> {
        let deadline = tokio::time::sleep(self.state.gateways.auth_timeout);
        tokio::pin!(deadline);
        let max_frame = self.state.collab.settings.max_frame;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    return Err((None, close(CloseCode::Policy, "no authentication received")));
                }
                incoming = stream.next() => match incoming {
                    None => return Err((None, None)),
                    Some(Ok(WsMessage::Text(text))) => {
                        let auth: AuthFrame = serde_json::from_str(&text).map_err(|_| {
                            (None, close(CloseCode::Policy, "send {\"type\":\"auth\",\"token\"} or the token query parameter"))
                        })?;
                        return Ok(auth.token);
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        if let Ok(Message::Sync(SyncMessage::SyncStep1(sv))) = Message::decode_v1(&bytes) {
                            *step1 = Some(sv);
                        }
                    }
                    Some(Ok(WsMessage::Ping(b))) => {
                        if self.session.pong(&b).await.is_err() {
                            return Err((None, None));
                        }
                    }
                    Some(Ok(WsMessage::Close(reason))) => return Err((None, reason)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err((None, Some(gateways::close_for(&e, max_frame)))),
                }
            }
        }
    }

    async fn in_room(
        &mut self,
        room: &Arc<Room>,
        stream: &mut actix_ws::MessageStream,
        principal: Principal,
        early_step1: Option<yrs::StateVector>,
    ) -> Result<Option<CloseReason>, End> {
        room.ready(&self.state)
            .await
            .map_err(|why| unavailable(&why))?;
        let mut principal = principal;
        let auth = room.auth().ok_or_else(|| unavailable("internal error"))?;
        self.rights = rights_in(&principal, &auth).map_err(|why| refusal(&why))?;
        // Subscribed before the greeting: nothing sent after the state vector is missed.
        let mut rx = room.tx.subscribe();
        let mut rights_changed = room.rights.subscribe();
        let mut access_changed = self.state.access.changes();
        for frame in room.greeting() {
            self.send(frame).await?;
        }
        if let Some(sv) = early_step1 {
            if let Some(step2) = room.step2(&sv) {
                self.send(step2).await?;
            }
        }
        let settings = self.state.collab.settings.clone();
        let limit = MessageLimit::per_minute(settings.messages_per_minute);
        let interval = self.state.gateways.heartbeat;
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => return Ok(None),
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            if !limit.allow() {
                                let why = format!("at most {} messages per minute (COLLAB_RATE_LIMIT_PER_MINUTE); reconnect to resync", limit.per_minute);
                                return Ok(close(CloseCode::Policy, &why));
                            }
                            self.on_binary(room, &principal, &bytes).await?;
                        }
                        Some(Ok(WsMessage::Ping(b))) => {
                            if self.session.pong(&b).await.is_err() {
                                return Ok(None);
                            }
                        }
                        Some(Ok(WsMessage::Close(reason))) => return Ok(reason),
                        Some(Ok(WsMessage::Text(_))) => {}
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ok(Some(gateways::close_for(&e, settings.max_frame))),
                    }
                }
                out = rx.recv() => match out {
                    Ok(frame) => self.send(frame).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Ok(close(CloseCode::Again, "the connection fell behind the document; reconnect to resync"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                },
                Ok(()) = access_changed.changed() => {
                    principal = principal.refreshed(&self.state).map_err(|e| refusal(&e.message))?;
                    self.recheck(room, &principal)?;
                }
                Ok(()) = rights_changed.changed() => {
                    self.recheck(room, &principal)?;
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        return Ok(close(CloseCode::Away, "heartbeat timeout"));
                    }
                    if self.session.ping(b"").await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn recheck(&mut self, room: &Room, principal: &Principal) -> Result<(), End> {
        let auth = room.auth().ok_or_else(|| unavailable("internal error"))?;
        self.rights = rights_in(principal, &auth).map_err(|why| refusal(&why))?;
        Ok(())
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.session.binary(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((None, None)),
            Err(_) => Err((
                None,
                close(CloseCode::Policy, "client too slow: nothing read for 30 s"),
            )),
        }
    }

    /// One binary frame: one or more y-protocols messages.
    async fn on_binary(
        &mut self,
        room: &Arc<Room>,
        principal: &Principal,
        bytes: &[u8],
    ) -> Result<(), End> {
        let mut decoder = DecoderV1::from(bytes);
        let mut read = 0;
        for message in MessageReader::new(&mut decoder) {
            read += 1;
            let message = message.map_err(|e| malformed(&format!("malformed message: {e}")))?;
            match message {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    if let Some(step2) = room.step2(&sv) {
                        self.send(step2).await?;
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(update))
                | Message::Sync(SyncMessage::Update(update)) => {
                    if self.rights == Rights::Read {
                        if !self.told_read_only {
                            self.told_read_only = true;
                            let why = "read-only: you may view this document; your updates are not applied";
                            self.send(denied(why)).await?;
                        }
                        continue;
                    }
                    match room.edit(&update, principal.user_id) {
                        Ok(()) => {}
                        Err(EditError::TooLarge(why)) => self.send(denied(&why)).await?,
                        Err(EditError::Malformed(why)) => return Err(malformed(&why)),
                    }
                }
                Message::Awareness(update) => {
                    let frame = encode(&Message::Awareness(update.clone()));
                    self.awareness_ids.extend(room.on_awareness(update));
                    publish_awareness(&self.state, room.id, &frame).await;
                }
                Message::AwarenessQuery => {
                    if let Some(frame) = room.awareness_now() {
                        self.send(frame).await?;
                    }
                }
                Message::Auth(_) | Message::Custom(..) => {}
            }
        }
        if read == 0 {
            return Err(malformed("malformed message: empty or truncated"));
        }
        Ok(())
    }
}

fn refusal(why: &str) -> End {
    (Some(denied(why)), close(CloseCode::Policy, why))
}

fn unavailable(why: &str) -> End {
    let why = format!("document unavailable: {why}");
    (Some(denied(&why)), close(CloseCode::Error, &why))
}

fn malformed(why: &str) -> End {
    (None, close(CloseCode::Unsupported, why))
}
