//! Notification points of a dump or restore, as CRIU names them ("action scripts"):
//! `pre-dump`, `post-dump`, `pre-restore`, `setup-namespaces`, `post-setup-namespaces`,
//! `post-restore`, `network-unlock`, `pre-resume`, `post-resume`. The pipelines call a
//! [`Notifier`] at each point; a failure aborts the operation (the dump releases the tree,
//! the restore kills what it made). Two notifiers exist: [`ActionScripts`] runs the
//! `--action-script` programs with CRIU's `CRTOOLS_*` environment, and the RPC server sends
//! NOTIFY messages to its caller (`rpc::RpcNotifier`).

use std::path::PathBuf;

/// Why a notification failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("action script {script} failed at '{action}': {why}")]
    Script {
        script: PathBuf,
        action: String,
        why: String,
    },
    #[error("the caller did not acknowledge notification '{action}': {why}")]
    Rpc { action: String, why: String },
    /// A hook of cryo's own (`migrate`'s hand-over at `post-dump`) failed.
    #[error("at '{action}': {why}")]
    Hook { action: String, why: String },
}

/// Receives the notification points.
pub trait Notifier {
    /// `action` happened; `pid` is the restored root's pid for `setup-namespaces` and
    /// `post-restore`.
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError>;
}

/// No hooks.
pub struct NoHooks;

impl Notifier for NoHooks {
    fn notify(&mut self, _: &str, _: Option<i32>) -> Result<(), NotifyError> {
        Ok(())
    }
}

/// `--action-script` programs, run in order for every action, each with
/// `CRTOOLS_SCRIPT_ACTION`, `CRTOOLS_IMAGE_DIR` and (when there is one) `CRTOOLS_INIT_PID`.
/// A script that exits non-zero fails the action.
pub struct ActionScripts {
    pub scripts: Vec<PathBuf>,
    pub images_dir: PathBuf,
}

impl Notifier for ActionScripts {
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError> {
        for s in &self.scripts {
            let mut c = std::process::Command::new(s);
            c.env("CRTOOLS_SCRIPT_ACTION", action)
                .env("CRTOOLS_IMAGE_DIR", &self.images_dir)
                .stdin(std::process::Stdio::null());
            if let Some(p) = pid {
                c.env("CRTOOLS_INIT_PID", p.to_string());
            }
            tracing::info!(script = %s.display(), action = %action, "running action script");
            let st = c.status().map_err(|e| NotifyError::Script {
                script: s.clone(),
                action: action.to_string(),
                why: e.to_string(),
            })?;
            if !st.success() {
                return Err(NotifyError::Script {
                    script: s.clone(),
                    action: action.to_string(),
                    why: format!("it exited with {st}"),
                });
            }
        }
        Ok(())
    }
}

/// Several notifiers, called in order (RPC mode runs the caller's and the scripts).
pub struct Chain<'a>(pub Vec<Box<dyn Notifier + 'a>>);

impl Notifier for Chain<'_> {
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError> {
        for n in &mut self.0 {
            n.notify(action, pid)?;
        }
        Ok(())
    }
}

/// `--status-fd` / RPC `status_fd`: one NUL byte written to `path` (`/proc/PID/fd/N`, the fd
/// in the table of whoever asked), CRIU's `status_ready`. A failure is only logged: the job
/// itself went well.
pub fn status_ready(path: &std::path::Path) {
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
    {
        tracing::warn!(status_fd = %path.display(), error = %e, "cannot write the status fd");
    }
}
