//! Reloading what may change without a restart: the shaping rules
//! (`delivery.shaping_file`), on `SIGHUP` or `POST /config/reload`.
//!
//! Owns: [`Reload`], a handle any thread may hold: it reads and checks
//! the file, and only if the whole file is good hands the new rules to
//! every shard's scheduler over the mesh (`Scheduler::set_shaping`). A bad
//! file changes nothing: the rules in force stay, and the error says why.
//! Queued mail is not touched; each path takes its new limits when its
//! next message starts.
//!
//! May call: `scheduler::shaping` (parse), the shard mesh. Must not: touch
//! a shard's state other than through the mesh.

use std::sync::Arc;

use super::Scheduler;
use super::shaping::Shaping;
use crate::shard::mesh::Mesh;

#[derive(Clone)]
pub struct Reload {
    shaping_file: String,
    mesh: Mesh<Scheduler>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// The file read (empty: only ringpost's own rules).
    pub shaping_file: String,
    /// Rules in force now, the file's and ringpost's.
    pub rules: usize,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReloadError {
    #[error("shaping rules not reloaded (the ones in force stay): {0}")]
    Invalid(String),
    #[error("shaping rules not reloaded everywhere: {0}")]
    Shard(#[from] crate::shard::mesh::ShardGone),
}

impl Reload {
    pub fn new(shaping_file: &str, mesh: Mesh<Scheduler>) -> Reload {
        Reload {
            shaping_file: shaping_file.to_string(),
            mesh,
        }
    }

    /// Reads the file again and gives every shard the new rules.
    pub async fn run(&self) -> Result<Reloaded, ReloadError> {
        let result = match Shaping::load(&self.shaping_file).map_err(ReloadError::Invalid) {
            Ok(s) => {
                let s = Arc::new(s);
                let rules = s.rules().len();
                if let Some(line) = s.tls_exemptions() {
                    log::info!("{line}");
                }
                self.mesh
                    .ask_all(move |sched: std::rc::Rc<Scheduler>| async move {
                        sched.set_shaping(s);
                    })
                    .await?;
                Ok(Reloaded {
                    shaping_file: self.shaping_file.clone(),
                    rules,
                })
            }
            Err(e) => Err(e),
        };
        let label = if result.is_ok() { "ok" } else { "failed" };
        ::metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => label).increment(1);
        match &result {
            Ok(r) => log::info!(
                "shaping rules reloaded: {} rules ({})",
                r.rules,
                match r.shaping_file.as_str() {
                    "" => "ringpost's own",
                    f => f,
                }
            ),
            Err(e) => log::error!("{e}"),
        }
        result
    }

    /// [`Reload::run`] from a thread outside the shards (the signal
    /// thread): blocks until every shard has the new rules.
    pub fn run_blocking(&self) -> Result<Reloaded, ReloadError> {
        futures::executor::block_on(self.run())
    }
}
