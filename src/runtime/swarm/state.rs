//! A service's state as the Swarm API reports it (spec, replicas, newest task),
//! mapped onto the runtime boundary's [`ContainerInfo`].

use bollard::models::{ServiceSpec, Task, TaskState};

use crate::runtime::{ContainerInfo, RunState};

/// A service's state as far as spawngate cares: its spec, version and replicas,
/// and its newest task.
pub(super) struct Observed {
    pub(super) id: String,
    pub(super) version: u64,
    pub(super) spec: ServiceSpec,
    pub(super) replicas: i64,
    /// When the spec last changed (RFC 3339): tasks older than it are history.
    pub(super) updated_at: Option<String>,
    pub(super) task: Option<Task>,
}

impl Observed {
    pub(super) fn labels(&self) -> std::collections::HashMap<String, String> {
        self.spec.labels.clone().unwrap_or_default()
    }

    /// The newest task belongs to the current spec (was made after its last
    /// change): otherwise the orchestrator has yet to make one.
    fn task_is_current(&self) -> bool {
        match (&self.task, &self.updated_at) {
            (Some(t), Some(updated)) => {
                match (
                    t.created_at.as_deref().and_then(parse_time),
                    parse_time(updated),
                ) {
                    (Some(created), Some(updated)) => created >= updated,
                    _ => true,
                }
            }
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn task_state(&self) -> Option<TaskState> {
        self.task
            .as_ref()
            .and_then(|t| t.status.as_ref())
            .and_then(|s| s.state)
    }

    /// What the runtime boundary reports: running (or on its way: scheduled,
    /// pulling, starting), or stopped with the task's exit code and, when no
    /// container ever ran, the scheduler's reason.
    pub(super) fn info(&self) -> ContainerInfo {
        let status = self.task.as_ref().and_then(|t| t.status.clone());
        let state = self.task_state();
        let timestamp = status.as_ref().and_then(|s| s.timestamp.clone());
        let mut info = ContainerInfo {
            id: self.id.clone(),
            state: RunState::Stopped,
            started_at: None,
            finished_at: None,
            exit_code: None,
            failure: None,
        };
        if self.replicas == 0 {
            info.finished_at = timestamp;
            info.exit_code = exit_code(status.as_ref());
            return info;
        }
        if !self.task_is_current() {
            // Scaled up a moment ago: the new task is not listed yet.
            info.state = RunState::Running;
            return info;
        }
        match state {
            Some(TaskState::RUNNING) => {
                info.state = RunState::Running;
                info.started_at = timestamp;
            }
            Some(s) if starting(s) => info.state = RunState::Running,
            _ => {
                info.finished_at = timestamp;
                info.exit_code = exit_code(status.as_ref());
                if info.exit_code.is_none() {
                    // Never ran (rejected: no such image on the node, no node
                    // meeting the constraints, a volume that cannot be mounted).
                    let err = status
                        .as_ref()
                        .and_then(|s| s.err.clone().or_else(|| s.message.clone()))
                        .unwrap_or_else(|| "no reason given".into());
                    let state = state.map_or_else(|| "gone".to_owned(), |s| s.to_string());
                    info.failure = Some(format!("the cluster could not run it ({state}): {err}"));
                }
            }
        }
        info
    }
}

fn exit_code(status: Option<&bollard::models::TaskStatus>) -> Option<i64> {
    status
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.exit_code)
        // A task that never got a container reports 0 here.
        .filter(|_| {
            status
                .and_then(|s| s.container_status.as_ref())
                .and_then(|c| c.container_id.as_ref())
                .is_some_and(|id| !id.is_empty())
        })
}

/// On its way to running.
pub(super) fn starting(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::NEW
            | TaskState::ALLOCATED
            | TaskState::PENDING
            | TaskState::ASSIGNED
            | TaskState::ACCEPTED
            | TaskState::PREPARING
            | TaskState::READY
            | TaskState::STARTING
    )
}

pub(super) fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_map_to_running_stopped_and_the_schedulers_reason() {
        let task = |state: TaskState, created: &str, exit: Option<i64>, err: Option<&str>| Task {
            created_at: Some(created.into()),
            status: Some(bollard::models::TaskStatus {
                state: Some(state),
                timestamp: Some(created.into()),
                err: err.map(str::to_owned),
                container_status: exit.map(|code| bollard::models::ContainerStatus {
                    container_id: Some("c1".into()),
                    exit_code: Some(code),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let observed = |replicas, task| Observed {
            id: "s".into(),
            version: 1,
            spec: ServiceSpec::default(),
            replicas,
            updated_at: Some("2026-01-01T00:00:10Z".into()),
            task,
        };
        let late = "2026-01-01T00:00:11Z";
        let early = "2026-01-01T00:00:09Z";
        let info = observed(1, Some(task(TaskState::RUNNING, late, None, None))).info();
        assert_eq!(info.state, RunState::Running);
        assert_eq!(info.started_at.as_deref(), Some(late));
        assert!(
            observed(1, Some(task(TaskState::PREPARING, late, None, None)))
                .info()
                .running()
        );
        // The old task of before a scale-up: the new one is on its way.
        assert!(
            observed(1, Some(task(TaskState::SHUTDOWN, early, Some(0), None)))
                .info()
                .running()
        );
        assert!(observed(1, None).info().running());
        let failed = observed(
            1,
            Some(task(
                TaskState::FAILED,
                late,
                Some(3),
                Some("task: non-zero exit (3)"),
            )),
        )
        .info();
        assert_eq!(
            (failed.state, failed.exit_code, failed.failure),
            (RunState::Stopped, Some(3), None)
        );
        let rejected = observed(
            1,
            Some(task(
                TaskState::REJECTED,
                late,
                None,
                Some("No such image: app:1"),
            )),
        )
        .info();
        assert_eq!(rejected.state, RunState::Stopped);
        assert_eq!(rejected.exit_code, None);
        assert!(rejected.failure.unwrap().contains("No such image: app:1"));
        let stopped = observed(0, Some(task(TaskState::SHUTDOWN, late, Some(0), None))).info();
        assert_eq!(stopped.state, RunState::Stopped);
    }
}
