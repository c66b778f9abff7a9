//! The task set: commands between the moment a request queue took them and their response,
//! so that task management functions from the control queue (possibly another thread) can
//! query them, abort them (the command then answers VIRTIO_SCSI_S_ABORTED instead of its
//! status) and wait until they are gone, as §5.6.6.2.1 requires before the TMF completes.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::lun_addr::LunAddr;

/// How long a task management function waits for aborted commands to finish.
const ABORT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Task {
    id: u64,
    addr: LunAddr,
    tag: u64,
    aborted: bool,
}

/// Which tasks a task management function acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One task of a LUN.
    Task(LunAddr, u64),
    /// Every task of a LUN.
    Lun(LunAddr),
    /// Every task of a target.
    Target(u8),
}

impl Scope {
    fn matches(self, t: &Task) -> bool {
        match self {
            Scope::Task(a, tag) => t.addr == a && t.tag == tag,
            Scope::Lun(a) => t.addr == a,
            Scope::Target(target) => t.addr.target == target,
        }
    }
}

/// The device's commands in progress.
#[derive(Debug, Default)]
pub struct TaskSet {
    tasks: Mutex<Inner>,
    gone: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    tasks: Vec<Task>,
    /// Task management functions waiting on `gone` (commands only signal when one waits:
    /// an unconditional notify is a futex call per command).
    waiters: usize,
}

/// A registered command; hand it back to [`TaskSet::finish`] when the command answers.
#[derive(Debug)]
#[must_use]
pub struct TaskId(u64);

impl TaskSet {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a command.
    pub fn start(&self, addr: LunAddr, tag: u64) -> TaskId {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.tasks.push(Task {
            id,
            addr,
            tag,
            aborted: false,
        });
        TaskId(id)
    }

    /// Whether the command was aborted so far ([`TaskSet::finish`] says it when it answers).
    pub fn is_aborted(&self, id: &TaskId) -> bool {
        self.lock().tasks.iter().any(|t| t.id == id.0 && t.aborted)
    }

    /// Removes the command; returns whether it was aborted meanwhile.
    pub fn finish(&self, id: TaskId) -> bool {
        let mut g = self.lock();
        let aborted = match g.tasks.iter().position(|t| t.id == id.0) {
            Some(i) => g.tasks.swap_remove(i).aborted,
            None => false,
        };
        let wake = g.waiters > 0;
        drop(g);
        if wake {
            self.gone.notify_all();
        }
        aborted
    }

    /// Whether a command in `scope` is in progress (QUERY TASK, QUERY TASK SET).
    pub fn any(&self, scope: Scope) -> bool {
        self.lock()
            .tasks
            .iter()
            .any(|t| !t.aborted && scope.matches(t))
    }

    /// Aborts every command in `scope` and waits until they have answered. Returns how many
    /// were aborted.
    pub fn abort(&self, scope: Scope) -> usize {
        let mut g = self.lock();
        let mut ids = Vec::new();
        for t in g.tasks.iter_mut().filter(|t| scope.matches(t)) {
            t.aborted = true;
            ids.push(t.id);
        }
        let deadline = Instant::now() + ABORT_WAIT;
        while g.tasks.iter().any(|t| ids.contains(&t.id)) {
            let now = Instant::now();
            if now >= deadline {
                log::warn!("virtio-scsi: aborted commands still running after {ABORT_WAIT:?}");
                break;
            }
            g.waiters += 1;
            g = self
                .gone
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            g.waiters -= 1;
        }
        ids.len()
    }

    /// Commands in progress.
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn abort_waits_for_the_command_and_marks_it() {
        let set = Arc::new(TaskSet::default());
        let a = LunAddr { target: 0, lun: 1 };
        let id = set.start(a, 7);
        let other = set.start(LunAddr { target: 0, lun: 2 }, 7);
        assert!(set.any(Scope::Task(a, 7)));
        let s2 = set.clone();
        let t = std::thread::spawn(move || s2.abort(Scope::Lun(a)));
        while !set.is_aborted(&id) {
            std::thread::yield_now();
        }
        assert!(!set.is_aborted(&other));
        assert!(set.finish(id));
        assert_eq!(t.join().unwrap(), 1);
        assert!(!set.any(Scope::Lun(a)));
        assert!(!set.finish(other));
        assert!(set.is_empty());
    }
}
