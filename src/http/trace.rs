//! `GET /queue/messages/ID/trace`: what happened to one message, in one
//! answer — every event of it in the delivery log, in order (Reception,
//! each TransientFailure, Delivery or Bounce, Expiration, Deletion, and
//! the Complaint and AsyncBounce events of reports about it), and where
//! it stands now if it is still queued.
//!
//! Owns: [`events`], the scan of the delivery log for one id. The log is
//! a file of JSON lines that may be gigabytes: it is read on a thread of
//! its own, never on the shard's executor, and at most [`MAX_EVENTS`]
//! events are returned. Only the current file is read (after a rotation,
//! older events are in the rotated files).
//!
//! Must not: write anything, or parse a line that does not name the id.

use std::io::BufRead;
use std::path::PathBuf;

/// Events returned at most for one message.
pub const MAX_EVENTS: usize = 10_000;

/// Why there is no trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the delivery log is {0:?}, not a file: set delivery.log to a path to trace messages")]
    NoFile(String),
    #[error("reading the delivery log {0}: {1}")]
    Read(PathBuf, std::io::Error),
}

/// The events of message `id` (its hex form) in the delivery log
/// `target` (`delivery.log`: a path, "stdout" or "off"), oldest first.
pub async fn events(target: &str, id: &str) -> Result<Vec<serde_json::Value>, TraceError> {
    if target == "off" || target == "stdout" {
        return Err(TraceError::NoFile(target.to_string()));
    }
    let path = PathBuf::from(target);
    let needle = format!("\"id\":\"{id}\"");
    let (tx, rx) = flume::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(scan(&path, &needle));
    });
    rx.recv_async().await.unwrap_or_else(|_| Ok(Vec::new()))
}

fn scan(path: &PathBuf, needle: &str) -> Result<Vec<serde_json::Value>, TraceError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // No log yet: nothing has happened to anything.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TraceError::Read(path.clone(), e)),
    };
    let mut found = Vec::new();
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| TraceError::Read(path.clone(), e))?;
        let text = String::from_utf8_lossy(&line);
        if !text.contains(needle) {
            continue;
        }
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) {
            found.push(event);
            if found.len() >= MAX_EVENTS {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_the_events_of_one_id_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("delivery.log");
        std::fs::write(
            &log,
            concat!(
                "{\"event\":\"Reception\",\"id\":\"aa\",\"recipient\":\"x@a\"}\n",
                "{\"event\":\"Reception\",\"id\":\"bb\",\"recipient\":\"y@b\"}\n",
                "not json \"id\":\"aa\"\n",
                "{\"event\":\"Delivery\",\"id\":\"aa\",\"recipient\":\"x@a\"}\n",
            ),
        )
        .unwrap();
        let found = scan(&log, "\"id\":\"aa\"").unwrap();
        let kinds: Vec<&str> = found.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Reception", "Delivery"]);
        assert!(scan(&dir.path().join("none"), "x").unwrap().is_empty());
    }
}
