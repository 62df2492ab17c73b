//! [`Backends`]: every backend this coordinator can use, behind the one
//! [`Backend`] trait. A call about a container goes to the backend that
//! launched it (learned at launch and from listings, else from the
//! database's `containers.backend`); `list` is the union of the backends in
//! use, so the reconciler sees local processes and Modal sandboxes alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use async_trait::async_trait;
use parhelia_proto::Event;

use super::modal::ModalBackend;
use super::{Backend, ContainerHandle, Endpoint, LaunchRequest, ObservedContainer};
use crate::db::Db;
use crate::error::CodedError;
use crate::error_codes;
use crate::plan::{BackendKind, LocalLayout};

/// Builds the Modal backend when it is first needed (it starts a Python
/// bridge, which a coordinator that never uses Modal should not).
pub type ModalFactory = Box<dyn Fn() -> Arc<ModalBackend> + Send + Sync>;

pub struct Backends {
    local: Arc<dyn Backend>,
    modal: Mutex<Option<Arc<ModalBackend>>>,
    modal_factory: Option<ModalFactory>,
    db: Option<Arc<Db>>,
    owners: Mutex<HashMap<String, BackendKind>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backends {
    /// One backend for everything (tests, and coordinators without Modal).
    pub fn single(backend: Arc<dyn Backend>) -> Self {
        Backends {
            local: backend,
            modal: Mutex::new(None),
            modal_factory: None,
            db: None,
            owners: Mutex::default(),
        }
    }

    pub fn new(local: Arc<dyn Backend>, modal: Option<ModalFactory>, db: Arc<Db>) -> Self {
        Backends {
            local,
            modal: Mutex::new(None),
            modal_factory: modal,
            db: Some(db),
            owners: Mutex::default(),
        }
    }

    /// Adds an already-built Modal backend (tests with the stand-in).
    pub fn with_modal(self, modal: Arc<ModalBackend>) -> Self {
        *lock(&self.modal) = Some(modal);
        self
    }

    /// The backend of a kind, or E506 when this coordinator has none.
    pub fn get(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, CodedError> {
        match kind {
            BackendKind::Local => Ok(Arc::clone(&self.local)),
            BackendKind::Modal => Ok(self.modal()? as Arc<dyn Backend>),
        }
    }

    /// The Modal backend (built on first use), or E506.
    pub fn modal(&self) -> Result<Arc<ModalBackend>, CodedError> {
        let mut modal = lock(&self.modal);
        if let Some(m) = modal.as_ref() {
            return Ok(Arc::clone(m));
        }
        match &self.modal_factory {
            Some(factory) => {
                let built = factory();
                *modal = Some(Arc::clone(&built));
                Ok(built)
            }
            None => Err(CodedError::new(
                error_codes::BACKEND_UNAVAILABLE,
                "this coordinator has no modal backend",
            )),
        }
    }

    /// Which backend runs a container.
    pub fn kind_of(&self, container_id: &str) -> BackendKind {
        if let Some(kind) = lock(&self.owners).get(container_id) {
            return *kind;
        }
        let recorded = self
            .db
            .as_ref()
            .and_then(|db| db.get_container(container_id).ok().flatten())
            .and_then(|c| crate::plan::parse_backend(&c.backend).ok());
        recorded.unwrap_or(BackendKind::Local)
    }

    /// Which backend holds a session's volume (its latest container's).
    pub fn kind_of_session(&self, session_id: &str) -> BackendKind {
        self.db
            .as_ref()
            .and_then(|db| db.get_session(session_id).ok().flatten())
            .and_then(|s| s.container_id)
            .map(|c| self.kind_of(&c))
            .unwrap_or(BackendKind::Local)
    }

    fn owner(&self, container_id: &str) -> Result<Arc<dyn Backend>> {
        Ok(self.get(self.kind_of(container_id))?)
    }

    /// Modal is listed once a container of this coordinator has run there
    /// (not merely because its bridge was started, e.g. by a refused
    /// `--backend modal`: a Modal that cannot list would hold up every pass).
    fn modal_in_use(&self) -> bool {
        let built = lock(&self.modal).is_some();
        match &self.db {
            Some(db) => {
                (self.modal_factory.is_some() || built)
                    && db.backend_ever_used("modal").unwrap_or(false)
            }
            None => built,
        }
    }
}

#[async_trait]
impl Backend for Backends {
    fn name(&self) -> &'static str {
        self.local.name()
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerHandle> {
        let backend = self.get(request.backend)?;
        lock(&self.owners).insert(request.ids.container_id.clone(), request.backend);
        backend.launch(request).await
    }

    async fn list(&self) -> Result<Vec<ObservedContainer>> {
        let mut all = self.local.list().await?;
        for c in &all {
            lock(&self.owners)
                .entry(c.container_id.clone())
                .or_insert(BackendKind::Local);
        }
        if self.modal_in_use() {
            let modal = self.get(BackendKind::Modal)?.list().await?;
            for c in &modal {
                lock(&self.owners).insert(c.container_id.clone(), BackendKind::Modal);
            }
            all.extend(modal);
        }
        Ok(all)
    }

    async fn list_each(&self) -> Vec<(&'static str, Result<Vec<ObservedContainer>>)> {
        let local = self.local.list().await;
        if let Ok(list) = &local {
            for c in list {
                lock(&self.owners)
                    .entry(c.container_id.clone())
                    .or_insert(BackendKind::Local);
            }
        }
        let mut each = vec![(self.local.name(), local)];
        if self.modal_in_use() {
            let modal = match self.get(BackendKind::Modal) {
                Ok(backend) => backend.list().await,
                Err(e) => Err(e.into()),
            };
            if let Ok(list) = &modal {
                for c in list {
                    lock(&self.owners).insert(c.container_id.clone(), BackendKind::Modal);
                }
            }
            each.push(("modal", modal));
        }
        each
    }

    async fn terminate(&self, container_id: &str) -> Result<()> {
        self.owner(container_id)?.terminate(container_id).await
    }

    async fn exit_signal(&self, container_id: &str) -> Option<super::ExitSignal> {
        self.owner(container_id)
            .ok()?
            .exit_signal(container_id)
            .await
    }

    /// Units are local (a Modal sandbox ends with its agent).
    async fn leftover_units(&self) -> Result<Vec<super::LeftoverUnit>> {
        self.local.leftover_units().await
    }

    async fn hold_unit(&self, container_id: &str) -> Result<super::UnitHold> {
        self.local.hold_unit(container_id).await
    }

    async fn left_behind_spec(&self, container_id: &str) -> Option<std::path::PathBuf> {
        self.owner(container_id)
            .ok()?
            .left_behind_spec(container_id)
            .await
    }

    async fn end_unit(&self, container_id: &str, hold: &super::UnitHold) -> Result<Vec<u32>> {
        self.local.end_unit(container_id, hold).await
    }

    async fn read_journal(
        &self,
        container_id: &str,
        session_id: &str,
        from_seq: u64,
    ) -> Result<Vec<Event>> {
        self.owner(container_id)?
            .read_journal(container_id, session_id, from_seq)
            .await
    }

    async fn endpoint(&self, container_id: &str) -> Result<Endpoint> {
        self.owner(container_id)?.endpoint(container_id).await
    }

    fn session_layout(&self, session_id: &str, container_id: &str) -> Option<LocalLayout> {
        self.get(self.kind_of_session(session_id))
            .ok()?
            .session_layout(session_id, container_id)
    }

    async fn store_dir(&self, session_id: &str, volume_dir: &Path) -> Result<Option<PathBuf>> {
        self.get(self.kind_of_session(session_id))?
            .store_dir(session_id, volume_dir)
            .await
    }

    async fn store_copy(&self, session_id: &str, volume_dir: &Path) -> Result<Option<PathBuf>> {
        self.get(self.kind_of_session(session_id))?
            .store_copy(session_id, volume_dir)
            .await
    }

    async fn write_back_store(
        &self,
        session_id: &str,
        copy: &Path,
        put: &[String],
        remove: &[String],
    ) -> Result<()> {
        self.get(self.kind_of_session(session_id))?
            .write_back_store(session_id, copy, put, remove)
            .await
    }

    async fn import_store(&self, session_id: &str, volume_dir: &Path, from: &Path) -> Result<()> {
        self.get(self.kind_of_session(session_id))?
            .import_store(session_id, volume_dir, from)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::config::Config;
    use crate::plan::AgentSettings;

    /// A Modal that cannot even start its bridge must not stop the local
    /// backend from being listed, unless a container ever ran on Modal.
    #[tokio::test]
    async fn a_broken_modal_is_listed_only_once_something_ran_there() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("p.db")).unwrap());
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(
            dir.path().to_path_buf(),
            "coord-70000001".into(),
            "/bin/false".into(),
        ));
        let root = dir.path().to_path_buf();
        let factory: ModalFactory = Box::new(move || {
            let mut config = Config::defaults().modal;
            config.python = "/nonexistent/python3".into();
            Arc::new(ModalBackend::new(
                root.clone(),
                "coord-70000001".into(),
                config,
                AgentSettings::default(),
            ))
        });
        let backends = Backends::new(local, Some(factory), Arc::clone(&db));
        // A refused `--backend modal` builds the Modal backend...
        let modal = backends.get(BackendKind::Modal).unwrap();
        assert!(modal.list().await.is_err());
        // ...and listing still works: nothing ever ran on Modal.
        backends.list().await.expect("list without Modal");
    }
}
