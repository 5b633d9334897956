//! A client agent's own registrations, as Consul's agents keep them ("local state"): the
//! services and checks registered through this agent's `/v1/agent/*` endpoints. They are
//! validated here, kept in memory and in `DATA_DIR/local/registrations.json` (rewritten
//! atomically and synced on every change), forwarded to a server, and kept true in the
//! catalog by anti-entropy (`crate::anti_entropy`). So a registration made while no server is
//! reachable is accepted and written once one is, and a client agent that restarts (its node
//! deregistered when it left) or whose servers lost their state puts its services back.
//!
//! Each registration is kept as the request that made it (path with query, and body): the
//! servers' one implementation of the endpoint turns it into catalog entries, whether it
//! arrives from a user or from anti-entropy. The client agent's endpoints that change and
//! read them are in `crate::local_endpoints`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use colony_store::{Check, HealthStatus, Service};
use serde::{Deserialize, Serialize};

use crate::consul::agent::{service_and_checks, standalone_check};
use crate::consul::types::{CheckRequest, ServiceRequest};
use crate::error::ApiResult;
use crate::json::decode;

/// The answer header saying a registration is kept by this agent but not yet in the catalog
/// (no server could take it): `pending`; or that a read was answered from this agent's own
/// registrations because no server could be reached: `local`.
pub const SYNC_HEADER: &str = "x-colony-sync";
/// The file's format version.
const FORMAT_VERSION: u32 = 1;

/// One registration, as the request that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Path and query (`/v1/agent/service/register?replace-existing-checks`).
    #[serde(rename = "URI")]
    pub uri: String,
    /// The request body as received (JSON, so UTF-8).
    #[serde(rename = "Body")]
    pub body: String,
    /// The IDs of the checks it registers (a service's own checks; a check's own ID).
    #[serde(rename = "CheckIDs")]
    pub check_ids: Vec<String>,
    /// Not known to be in the catalog as made: recorded, but no server has taken it yet
    /// (anti-entropy sends it even if the catalog has an older version of it).
    #[serde(rename = "Pending", default)]
    pub pending: bool,
}

/// Every registration of this agent, by service ID and by check ID (checks registered on
/// their own, not a service's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrations {
    /// Services by ID.
    #[serde(rename = "Services")]
    pub services: BTreeMap<String, Registration>,
    /// Checks registered on their own, by ID.
    #[serde(rename = "Checks")]
    pub checks: BTreeMap<String, Registration>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    #[serde(rename = "Version")]
    version: u32,
    #[serde(flatten)]
    registrations: Registrations,
}

/// Which table a registration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Service,
    Check,
}

/// A client agent's registrations and the file that keeps them.
pub struct LocalState {
    pub(crate) node: String,
    pub(crate) datacenter: String,
    file: Option<PathBuf>,
    registrations: Mutex<Registrations>,
    /// Held while a change is recorded and forwarded, and while anti-entropy compares and
    /// repairs, so neither acts on a view the other is changing.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Wakes anti-entropy: a change could not be written to the catalog.
    pub(crate) wake: tokio::sync::Notify,
    /// What anti-entropy has done since start-up.
    pub(crate) sync_counters: crate::anti_entropy::SyncCounters,
}

impl LocalState {
    /// The registrations of client agent `node`, read from `data_dir` if there is one (none:
    /// kept in memory only, lost on restart).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed; the message names it.
    pub fn open(node: &str, data_dir: Option<&Path>) -> Result<LocalState, String> {
        let file = data_dir.map(|dir| dir.join("local").join("registrations.json"));
        let registrations = match &file {
            Some(path) => read_file(path)?,
            None => Registrations::default(),
        };
        Ok(LocalState {
            node: node.to_string(),
            datacenter: "dc1".to_string(),
            file,
            registrations: Mutex::new(registrations),
            changing: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            sync_counters: crate::anti_entropy::SyncCounters::default(),
        })
    }

    /// The same registrations, for an agent in `datacenter` (named in local answers).
    pub fn in_datacenter(mut self, datacenter: &str) -> Self {
        datacenter.clone_into(&mut self.datacenter);
        self
    }

    /// Validates a service registration's body for this agent's node: the service and its
    /// checks, or the error a server would give.
    pub(crate) fn parse_service(
        &self,
        body: &[u8],
        now_ms: u64,
    ) -> ApiResult<(Service, Vec<Check>)> {
        service_and_checks(decode::<ServiceRequest>(body)?, self.node.clone(), now_ms)
    }

    /// The services and checks this agent's registrations define, as the catalog would hold
    /// them (check statuses as `status_of` knows them, else as registered): what its
    /// `/v1/agent/*` reads answer while no server is reachable. A registration that no
    /// longer validates is skipped.
    pub(crate) fn services_and_checks(
        &self,
        now_ms: u64,
        status_of: impl Fn(&str) -> Option<HealthStatus>,
    ) -> (Vec<Service>, Vec<Check>) {
        let registrations = self.registrations();
        let mut services = Vec::new();
        let mut checks = Vec::new();
        for registration in registrations.services.values() {
            let Ok((service, own)) = self.parse_service(registration.body.as_bytes(), now_ms)
            else {
                continue;
            };
            for mut check in own {
                check.node.clone_from(&self.node);
                check.service_name.clone_from(&service.name);
                check.service_tags.clone_from(&service.tags);
                checks.push(check);
            }
            services.push(service);
        }
        for registration in registrations.checks.values() {
            let Ok(mut check) = parse_check(registration.body.as_bytes(), now_ms) else {
                continue;
            };
            check.node.clone_from(&self.node);
            if let Some(service) = services.iter().find(|s| s.id == check.service_id) {
                check.service_name.clone_from(&service.name);
                check.service_tags.clone_from(&service.tags);
            }
            checks.push(check);
        }
        for check in &mut checks {
            if let Some(status) = status_of(&check.id) {
                check.status = status;
            }
        }
        (services, checks)
    }

    /// Registrations no server has taken yet.
    pub fn pending(&self) -> usize {
        let registrations = self.lock();
        registrations
            .services
            .values()
            .chain(registrations.checks.values())
            .filter(|r| r.pending)
            .count()
    }

    /// The file the registrations are kept in, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// A copy of every registration.
    pub fn registrations(&self) -> Registrations {
        self.lock().clone()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Registrations> {
        self.registrations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets (`Some`) or removes (`None`) registration `id`, writes the file, and returns what
    /// was there before. On a write error nothing changes.
    pub(crate) fn set(
        &self,
        kind: Kind,
        id: &str,
        registration: Option<Registration>,
    ) -> Result<Option<Registration>, String> {
        let mut registrations = self.lock();
        let mut next = registrations.clone();
        let table = match kind {
            Kind::Service => &mut next.services,
            Kind::Check => &mut next.checks,
        };
        let before = match registration {
            Some(r) => table.insert(id.to_string(), r),
            None => table.remove(id),
        };
        if let Some(path) = &self.file {
            write_file(path, &next)?;
        }
        *registrations = next;
        Ok(before)
    }
}

/// Validates a check registration's body (a check on its own): the check, or the error a
/// server would give.
pub(crate) fn parse_check(body: &[u8], now_ms: u64) -> ApiResult<Check> {
    standalone_check(decode::<CheckRequest>(body)?, now_ms)
}

fn read_file(path: &Path) -> Result<Registrations, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Registrations::default());
        }
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|error| {
        format!(
            "{} is damaged ({error}); move it away to start without this agent's registrations",
            path.display()
        )
    })?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "{} has format version {}, this colony reads version {FORMAT_VERSION}",
            path.display(),
            file.version
        ));
    }
    Ok(file.registrations)
}

/// Writes `registrations` to `path` atomically: a synced temporary file renamed over it, and
/// the directory synced.
fn write_file(path: &Path, registrations: &Registrations) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |what: &str, error: std::io::Error| {
        format!(
            "cannot {what} {}: {error}; the change was not made",
            path.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    let file = StateFile {
        version: FORMAT_VERSION,
        registrations: registrations.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| fail("encode", e.into()))?;
    let temporary = path.with_extension("json.tmp");
    let mut out = std::fs::File::create(&temporary).map_err(|e| fail("write", e))?;
    out.write_all(&bytes).map_err(|e| fail("write", e))?;
    out.sync_all().map_err(|e| fail("sync", e))?;
    std::fs::rename(&temporary, path).map_err(|e| fail("replace", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync the directory of", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(body: &str) -> Registration {
        Registration {
            uri: "/v1/agent/service/register".into(),
            body: body.into(),
            check_ids: vec!["service:web".into()],
            pending: false,
        }
    }

    #[test]
    fn registrations_survive_a_reopen_and_removals_too() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = LocalState::open("c1", Some(dir.path()))?;
        assert_eq!(
            state.set(Kind::Service, "web", Some(registration("{}")))?,
            None
        );
        state.set(Kind::Service, "db", Some(registration("{\"Name\":\"db\"}")))?;
        state.set(Kind::Check, "disk", Some(registration("{}")))?;
        let before = state.set(Kind::Service, "web", None)?;
        assert_eq!(before, Some(registration("{}")));
        let reopened = LocalState::open("c1", Some(dir.path()))?;
        assert_eq!(reopened.registrations(), state.registrations());
        assert_eq!(
            reopened.registrations().services.keys().collect::<Vec<_>>(),
            ["db"]
        );
        assert_eq!(
            reopened.registrations().checks.keys().collect::<Vec<_>>(),
            ["disk"]
        );
        Ok(())
    }

    #[test]
    fn a_damaged_file_is_named_and_refused() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("local").join("registrations.json");
        std::fs::create_dir_all(path.parent().ok_or("parent")?).map_err(|e| e.to_string())?;
        std::fs::write(&path, b"{\"Version\": 1, \"Services\": {\"web\": ")
            .map_err(|e| e.to_string())?;
        let Err(error) = LocalState::open("c1", Some(dir.path())) else {
            return Err("a truncated file was accepted".into());
        };
        assert!(error.contains("registrations.json is damaged"), "{error}");
        std::fs::write(&path, b"{\"Version\": 9, \"Services\": {}, \"Checks\": {}}")
            .map_err(|e| e.to_string())?;
        let Err(error) = LocalState::open("c1", Some(dir.path())) else {
            return Err("an unknown version was accepted".into());
        };
        assert!(error.contains("format version 9"), "{error}");
        Ok(())
    }

    #[test]
    fn a_failed_write_changes_nothing() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = LocalState::open("c1", Some(dir.path()))?;
        state.set(Kind::Service, "web", Some(registration("{}")))?;
        // The directory the file lives in becomes a file: every write fails.
        let local = dir.path().join("local");
        std::fs::remove_dir_all(&local).map_err(|e| e.to_string())?;
        std::fs::write(&local, b"not a directory").map_err(|e| e.to_string())?;
        let error = state
            .set(Kind::Service, "db", Some(registration("{}")))
            .err()
            .ok_or("the write should fail")?;
        assert!(error.contains("registrations.json"), "{error}");
        assert_eq!(
            state.registrations().services.keys().collect::<Vec<_>>(),
            ["web"]
        );
        Ok(())
    }
}
