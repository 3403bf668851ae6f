//! A document's content as the log has it: loading (snapshot + tail), snapshots, the
//! document as of a version, its plain text, and the update that restores an old state.

use base64::Engine;
use sqlx::PgPool;
use uuid::Uuid;
use yrs::types::xml::XmlOut;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn, XmlFragment};

use crate::store::{Direction, EventStore};

/// Events read per round trip while loading.
const PAGE: i64 = 1000;

/// A document loaded from the log.
pub struct Content {
    pub doc: Doc,
    /// The stream version it includes (0: no update yet; the creation is version 1).
    pub version: i64,
    /// The log position of the last event read.
    pub position: i64,
    /// Updates read after the snapshot.
    pub tail: usize,
}

/// Why a document could not be loaded. Either way nothing is served: an empty document
/// stands in for nothing (a client would merge its state into it as if it were new).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the event store is unavailable: {0}")]
    Store(String),
    #[error("version {version} of the document does not load: {why}")]
    Corrupt { version: i64, why: String },
}

pub fn stream(id: Uuid) -> String {
    format!("document-{id}")
}

/// The update of a `DocumentUpdated` event's data.
pub fn update_of(data: &serde_json::Value) -> Result<Vec<u8>, String> {
    let text = data
        .get("update")
        .and_then(|u| u.as_str())
        .ok_or("no update")?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("the update is not base64: {e}"))
}

/// Applies one update to `doc`; `Ok(true)` when it brought anything new (or parts waiting
/// for others).
pub fn apply(doc: &Doc, update: &[u8]) -> Result<bool, String> {
    let update = Update::decode_v1(update).map_err(|e| format!("not a Yjs update: {e}"))?;
    let mut txn = doc.transact_mut();
    txn.apply_update(update)
        .map_err(|e| format!("the update does not apply: {e}"))?;
    let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
    Ok(changed || txn.has_missing_updates())
}

/// The whole state of `doc` as one update.
pub fn encode(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// Loads the document up to version `up_to` (everything when `None`): the latest snapshot
/// at or before it, then the updates after the snapshot.
pub async fn load(
    store: &dyn EventStore,
    pool: &PgPool,
    id: Uuid,
    up_to: Option<i64>,
) -> Result<Content, LoadError> {
    let limit = up_to.unwrap_or(i64::MAX);
    let snapshot: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, state FROM document_snapshots WHERE document_id = $1 AND version <= $2 \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .bind(limit)
    .fetch_optional(pool)
    .await
    .map_err(|e| LoadError::Store(e.to_string()))?;
    let doc = Doc::new();
    let mut version = 0;
    if let Some((v, state)) = snapshot {
        apply(&doc, &state).map_err(|why| LoadError::Corrupt {
            version: v,
            why: format!("snapshot: {why}"),
        })?;
        version = v;
    }
    let name = stream(id);
    let mut position = 0;
    let mut tail = 0;
    loop {
        let page = store
            .read_stream(
                &name,
                version + 1,
                Direction::Forward,
                PAGE.min(limit - version),
            )
            .await
            .map_err(|e| LoadError::Store(e.to_string()))?;
        let last = page.len() as i64;
        for e in page {
            version = e.version;
            position = e.position;
            if e.event_type != "DocumentUpdated" {
                continue;
            }
            let update = update_of(&e.data).map_err(|why| LoadError::Corrupt {
                version: e.version,
                why,
            })?;
            apply(&doc, &update).map_err(|why| LoadError::Corrupt {
                version: e.version,
                why,
            })?;
            tail += 1;
        }
        if last < PAGE || version >= limit {
            break;
        }
    }
    Ok(Content {
        doc,
        version,
        position,
        tail,
    })
}

/// Saves the state at `version` as a snapshot (built from the log, not from a live copy,
/// so that it is exactly that version).
pub async fn snapshot(
    store: &dyn EventStore,
    pool: &PgPool,
    id: Uuid,
    version: i64,
) -> Result<(), LoadError> {
    let content = load(store, pool, id, Some(version)).await?;
    if content.version != version {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO document_snapshots (document_id, version, state) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(version)
    .bind(encode(&content.doc))
    .execute(pool)
    .await
    .map_err(|e| LoadError::Store(e.to_string()))?;
    Ok(())
}

/// The plain text of the document's top-level `Y.Text` and `Y.XmlFragment` types, by name.
/// A root's type is not in the update; it is told from its content (characters for a
/// text, elements or XML text for a fragment). Other roots (maps, arrays) are left out.
pub fn texts(update: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let names: Vec<String> = {
        let doc = Doc::new();
        apply(&doc, update)?;
        let txn = doc.transact();
        txn.root_refs().map(|(name, _)| name.to_owned()).collect()
    };
    let mut out = serde_json::Map::new();
    for name in names {
        // A fresh copy per reading: a root's type is fixed once it is read as one.
        let as_text = Doc::new();
        apply(&as_text, update)?;
        let text = as_text.get_or_insert_text(name.as_str());
        let plain = text.get_string(&as_text.transact());
        if !plain.is_empty() {
            out.insert(name, plain.into());
            continue;
        }
        let as_xml = Doc::new();
        apply(&as_xml, update)?;
        let fragment = as_xml.get_or_insert_xml_fragment(name.as_str());
        let txn = as_xml.transact();
        if fragment.len(&txn) > 0 {
            let mut plain = String::new();
            for child in fragment.children(&txn) {
                xml_text(&child, &txn, &mut plain);
            }
            out.insert(name, plain.trim_end().to_owned().into());
        } else {
            out.insert(name, String::new().into());
        }
    }
    Ok(out)
}

/// The characters of an XML node, one line per block element.
fn xml_text<T: ReadTxn>(node: &XmlOut, txn: &T, out: &mut String) {
    match node {
        XmlOut::Text(t) => out.push_str(&t.get_string(txn)),
        XmlOut::Element(e) => {
            for child in e.children(txn) {
                xml_text(&child, txn, out);
            }
            out.push('\n');
        }
        XmlOut::Fragment(f) => {
            for child in f.children(txn) {
                xml_text(&child, txn, out);
            }
        }
    }
}

/// The update that brings the current document back to the text of `old`: for every
/// top-level `Y.Text`, the characters that differ are deleted and the old ones inserted
/// (the common beginning and end stay, so that concurrent cursors keep their place).
/// `Err` names a root whose type this cannot restore (a fragment, a map).
pub fn restore(current: &Doc, old: &[u8]) -> Result<Vec<u8>, String> {
    let old_texts = texts(old)?;
    let now_update = encode(current);
    let now_texts = texts(&now_update)?;
    let old_doc = Doc::new();
    apply(&old_doc, old)?;
    // Every root of either version must be a text for a text restore to be exact.
    for (name, _) in old_texts.iter().chain(now_texts.iter()) {
        let probe = Doc::new();
        apply(&probe, &now_update)?;
        apply(&probe, old)?;
        let fragment = probe.get_or_insert_xml_fragment(name.as_str());
        let has_xml = fragment.len(&probe.transact()) > 0
            && fragment
                .children(&probe.transact())
                .any(|c| !matches!(c, XmlOut::Text(_)));
        if has_xml {
            return Err(format!(
                "the top-level type `{name}` is an XML fragment; restore supports documents \
                 whose top-level types are Y.Text"
            ));
        }
    }
    let target = Doc::new();
    apply(&target, &now_update)?;
    let mut txn = target.transact_mut();
    let names: std::collections::BTreeSet<&String> =
        old_texts.keys().chain(now_texts.keys()).collect();
    for name in names {
        let want: Vec<char> = old_texts
            .get(name.as_str())
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .chars()
            .collect();
        let text = txn.get_or_insert_text(name.as_str());
        let have: Vec<char> = text.get_string(&txn).chars().collect();
        if have == want {
            continue;
        }
        let prefix = have.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let suffix = have[prefix..]
            .iter()
            .rev()
            .zip(want[prefix..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        // Yjs text indexes count UTF-16 code units in the JS client; yrs's default offset
        // kind for a fresh document is bytes, so the index is given in bytes here.
        let start: usize = have[..prefix].iter().map(|c| c.len_utf8()).sum();
        let removed: usize = have[prefix..have.len() - suffix]
            .iter()
            .map(|c| c.len_utf8())
            .sum();
        if removed > 0 {
            text.remove_range(&mut txn, start as u32, removed as u32);
        }
        let inserted: String = want[prefix..want.len() - suffix].iter().collect();
        if !inserted.is_empty() {
            text.insert(&mut txn, start as u32, &inserted);
        }
    }
    Ok(txn.encode_update_v1())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(doc: &Doc, at: u32, s: &str) -> Vec<u8> {
        let text = doc.get_or_insert_text("content");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, at, s);
        txn.encode_update_v1()
    }

    #[test]
    fn a_restore_is_an_update_that_brings_the_old_text_back() {
        let doc = Doc::new();
        typed(&doc, 0, "hello world");
        let old = encode(&doc);
        typed(&doc, 5, ", dear");
        let restore_update = restore(&doc, &old).unwrap();
        let elsewhere = Doc::new();
        apply(&elsewhere, &encode(&doc)).unwrap();
        assert!(apply(&elsewhere, &restore_update).unwrap());
        let text = elsewhere.get_or_insert_text("content");
        assert_eq!(text.get_string(&elsewhere.transact()), "hello world");
        assert_eq!(
            texts(&encode(&elsewhere)).unwrap()["content"],
            "hello world"
        );
    }

    #[test]
    fn an_update_already_known_changes_nothing_and_garbage_is_refused() {
        let doc = Doc::new();
        let u = typed(&doc, 0, "abc");
        let other = Doc::new();
        assert!(apply(&other, &u).unwrap());
        assert!(!apply(&other, &u).unwrap());
        assert!(apply(&other, &[0xff, 0x01]).is_err());
    }

    #[test]
    fn the_text_of_an_xml_fragment_is_its_characters() {
        let doc = Doc::new();
        let frag = doc.get_or_insert_xml_fragment("prosemirror");
        {
            let mut txn = doc.transact_mut();
            let p = frag.push_back(&mut txn, yrs::XmlElementPrelim::empty("paragraph"));
            p.push_back(&mut txn, yrs::XmlTextPrelim::new("Hello"));
        }
        let t = texts(&encode(&doc)).unwrap();
        assert_eq!(t["prosemirror"], "Hello");
        assert!(restore(&doc, &encode(&doc)).is_err());
    }
}
