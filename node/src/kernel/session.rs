//! The Jupyter session core: which kernel message belongs to which run, when a run is done,
//! what state the kernel is in, and whether its heartbeat is still there.
//!
//! A plain state machine in the style of `quinn-proto`: no sockets, no clock, no tasks. The
//! driver (`super::bridge`) tells it what it did (commands), hands it every decoded kernel
//! message and heartbeat reply with the current time (`handle_*`, `on_*`), and drains what it
//! concluded (`poll_*`). It does not decode wire bytes (`super::wire`), start or kill processes
//! (`super::process`), or decide how long to wait for anything but the heartbeat.
//!
//! The rules it keeps:
//! - A run is [`KernelEvent::Done`] only once both its shell `execute_reply` and its iopub
//!   `status: idle` have arrived. Iopub and shell are separate sockets with no ordering between
//!   them, and the idle status is the kernel's last iopub message for a request, so this is what
//!   guarantees every output of a run precedes its `Done`.
//! - Runs are reported in the order they were sent: a run's outputs and `Done` come after the
//!   `Done` of every earlier run. The kernel runs requests in order, but the shell reply of one
//!   run can arrive after the first iopub output of the next; such early outputs are held (only
//!   in that window) until the earlier run is done.
//! - Every run handed to [`Session::execute`] gets exactly one `Done`: from the kernel's reply,
//!   or `Aborted` when the kernel dies, is restarted or shut down.
//! - Messages for runs that are no longer pending (after an abort) are dropped, so nothing of a
//!   run follows its `Done`.
//! - A status change is reported once; repeated busy/idle messages are not.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use airlock_protocol::{DeathCause, KernelStatus, Output, RunId, RunStatus};

use super::KernelEvent;
use super::wire::{Activity, Body, Incoming};

/// Bookkeeping for one kernel's requests and liveness; lives across restarts.
///
/// Methods come in four kinds, as in `quinn_proto::Connection`:
/// - getters: [`status`](Self::status), [`pending_runs`](Self::pending_runs),
///   [`heartbeat_deadline`](Self::heartbeat_deadline);
/// - `handle_*`/`on_*`: what the kernel said ([`handle_message`](Self::handle_message),
///   [`on_heartbeat_reply`](Self::on_heartbeat_reply));
/// - commands: what the driver did ([`starting`](Self::starting), [`ready`](Self::ready),
///   [`execute`](Self::execute), [`send_failed`](Self::send_failed),
///   [`restarting`](Self::restarting), [`died`](Self::died),
///   [`shutting_down`](Self::shutting_down));
/// - `poll_*`: conclusions ([`poll_event`](Self::poll_event),
///   [`poll_heartbeat`](Self::poll_heartbeat)).
#[derive(Debug)]
pub struct Session {
    status: KernelStatus,
    /// Runs sent to the kernel and not yet done, in the order they were sent. The kernel works
    /// through them in that order, so the one its messages are about is almost always the first:
    /// a front-to-back scan beats hashing the `msg_id`.
    runs: VecDeque<PendingRun>,
    events: VecDeque<KernelEvent>,
    heartbeat_timeout: Duration,
    /// When the heartbeat last answered; `None` while no live kernel is being watched.
    last_heartbeat: Option<Instant>,
}

#[derive(Debug)]
struct PendingRun {
    run: RunId,
    /// The `msg_id` of the `execute_request`, which the kernel's messages carry as parent.
    msg_id: String,
    /// The shell reply, once it arrived.
    reply: Option<(RunStatus, Option<u32>)>,
    /// Whether iopub said `idle` for this request.
    idle: bool,
    /// Outputs that arrived while an earlier run was still pending; released when this run
    /// reaches the front. Empty (and unallocated) but for that short window.
    held: Vec<Output>,
}

impl Session {
    /// A session whose kernel is not started yet. `heartbeat_timeout` is how long the heartbeat
    /// may stay silent before the kernel is declared dead.
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Session {
            status: KernelStatus::Starting,
            runs: VecDeque::new(),
            events: VecDeque::new(),
            heartbeat_timeout,
            last_heartbeat: None,
        }
    }

    /// The kernel's state as last reported.
    pub fn status(&self) -> &KernelStatus {
        &self.status
    }

    /// How many runs are waiting for their `Done`.
    pub fn pending_runs(&self) -> usize {
        self.runs.len()
    }

    /// When [`poll_heartbeat`](Self::poll_heartbeat) will declare the kernel dead unless a
    /// heartbeat reply comes first; `None` while no kernel is watched.
    pub fn heartbeat_deadline(&self) -> Option<Instant> {
        self.last_heartbeat
            .map(|last| last + self.heartbeat_timeout)
    }

    /// A fresh kernel process is being started. Always reported, the first start included.
    pub fn starting(&mut self) {
        self.last_heartbeat = None;
        self.status = KernelStatus::Starting;
        self.events
            .push_back(KernelEvent::Status(KernelStatus::Starting));
    }

    /// The kernel answered its first request: it is idle, and its heartbeat is watched from `now`.
    pub fn ready(&mut self, now: Instant) {
        self.last_heartbeat = Some(now);
        self.set_status(KernelStatus::Idle);
    }

    /// Records that `run` is being sent to the kernel as the request `msg_id`. Returns `false`
    /// when there is no live kernel: the run is then done at once as `Aborted`, and the driver
    /// must not send it.
    pub fn execute(&mut self, run: RunId, msg_id: String) -> bool {
        if matches!(self.status, KernelStatus::Dead { .. }) {
            self.reject(run);
            return false;
        }
        self.runs.push_back(PendingRun {
            run,
            msg_id,
            reply: None,
            idle: false,
            held: Vec::new(),
        });
        true
    }

    /// A run the driver will not send (no live kernel): done at once as `Aborted`.
    pub fn reject(&mut self, run: RunId) {
        self.events.push_back(aborted(run));
    }

    /// Sending `run`'s request failed, so the kernel will never answer it: done as `Aborted`,
    /// in its turn.
    pub fn send_failed(&mut self, run: RunId) {
        if let Some(failed) = self.runs.iter_mut().find(|pending| pending.run == run) {
            failed.reply = Some((RunStatus::Aborted, None));
            failed.idle = true;
            self.finish_ready_runs();
        }
    }

    /// The kernel is being restarted: pending runs are aborted, the heartbeat is no longer
    /// watched. [`starting`](Self::starting) follows once the new process is launched.
    pub fn restarting(&mut self) {
        self.last_heartbeat = None;
        self.set_status(KernelStatus::Restarting);
        self.abort_all();
    }

    /// The kernel is gone. Reports `Dead { cause }` and aborts every pending run; returns `false`
    /// (and does nothing) when it was already reported dead.
    pub fn died(&mut self, cause: DeathCause) -> bool {
        if matches!(self.status, KernelStatus::Dead { .. }) {
            return false;
        }
        self.last_heartbeat = None;
        self.set_status(KernelStatus::Dead { cause });
        self.abort_all();
        true
    }

    /// The bridge is shutting down on request: pending runs are aborted. No status follows; the
    /// event stream simply ends.
    pub fn shutting_down(&mut self) {
        self.last_heartbeat = None;
        self.abort_all();
    }

    /// A message from the kernel, on any channel.
    pub fn handle_message(&mut self, message: Incoming<'_>) {
        let Some(parent) = message.parent.as_deref() else {
            return;
        };
        // Messages about anything but a pending run (start-up probes, aborted runs) are dropped.
        let Some(index) = self
            .runs
            .iter()
            .position(|pending| pending.msg_id == parent)
        else {
            return;
        };
        match message.body {
            Body::Output(output) if index == 0 => {
                let run = self.runs[index].run;
                self.events.push_back(KernelEvent::Output { run, output });
            }
            Body::Output(output) => self.runs[index].held.push(output),
            Body::Status(Activity::Busy) => self.set_status(KernelStatus::Busy),
            Body::Status(Activity::Idle) => {
                self.runs[index].idle = true;
                self.finish_ready_runs();
                self.set_status(KernelStatus::Idle);
            }
            Body::ExecuteReply {
                status,
                execution_count,
            } => {
                self.runs[index].reply = Some((status, execution_count));
                self.finish_ready_runs();
            }
            Body::Status(Activity::Other)
            | Body::KernelInfoReply
            | Body::ShutdownReply
            | Body::Ignored => {}
        }
    }

    /// The heartbeat answered at `now`.
    pub fn on_heartbeat_reply(&mut self, now: Instant) {
        if let Some(last) = &mut self.last_heartbeat {
            *last = (*last).max(now);
        }
    }

    /// Checks the heartbeat at `now`. When it has been silent longer than the timeout, the kernel
    /// is declared dead (events queued, runs aborted) and the cause is returned so the driver can
    /// kill the silent process.
    pub fn poll_heartbeat(&mut self, now: Instant) -> Option<DeathCause> {
        let last = self.last_heartbeat?;
        let silent = now.saturating_duration_since(last);
        if silent <= self.heartbeat_timeout {
            return None;
        }
        let cause = DeathCause::HeartbeatLost {
            silent_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
        };
        self.died(cause.clone());
        Some(cause)
    }

    /// The next event to deliver, oldest first.
    pub fn poll_event(&mut self) -> Option<KernelEvent> {
        self.events.pop_front()
    }

    /// Moves the front of the queue along: releases the outputs the front run held while it
    /// waited behind earlier runs, and reports its `Done` once it has both its reply and its idle
    /// status, then does the same for the next run.
    fn finish_ready_runs(&mut self) {
        while let Some(front) = self.runs.front_mut() {
            if !front.held.is_empty() {
                let run = front.run;
                let held = std::mem::take(&mut front.held);
                self.events.extend(
                    held.into_iter()
                        .map(|output| KernelEvent::Output { run, output }),
                );
            }
            let (true, Some((status, execution_count))) = (front.idle, front.reply) else {
                return;
            };
            let run = front.run;
            self.runs.pop_front();
            self.events.push_back(KernelEvent::Done {
                run,
                status,
                execution_count,
            });
        }
    }

    /// Ends every pending run as `Aborted`, in order, each after the outputs it was holding.
    fn abort_all(&mut self) {
        while let Some(pending) = self.runs.pop_front() {
            let run = pending.run;
            self.events.extend(
                pending
                    .held
                    .into_iter()
                    .map(|output| KernelEvent::Output { run, output }),
            );
            self.events.push_back(aborted(run));
        }
    }

    fn set_status(&mut self, status: KernelStatus) {
        if self.status != status {
            self.status = status.clone();
            self.events.push_back(KernelEvent::Status(status));
        }
    }
}

fn aborted(run: RunId) -> KernelEvent {
    KernelEvent::Done {
        run,
        status: RunStatus::Aborted,
        execution_count: None,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use airlock_protocol::StreamName;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(800);

    fn message(parent: &str, body: Body) -> Incoming<'_> {
        Incoming {
            parent: Some(Cow::Borrowed(parent)),
            body,
        }
    }

    fn stdout(text: &str) -> Body {
        Body::Output(Output::Stream {
            name: StreamName::Stdout,
            text: text.into(),
        })
    }

    fn reply(status: RunStatus, count: u32) -> Body {
        Body::ExecuteReply {
            status,
            execution_count: Some(count),
        }
    }

    fn drain(session: &mut Session) -> Vec<KernelEvent> {
        std::iter::from_fn(|| session.poll_event()).collect()
    }

    fn ready_session(now: Instant) -> Session {
        let mut session = Session::new(TIMEOUT);
        session.starting();
        session.ready(now);
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Starting),
                KernelEvent::Status(KernelStatus::Idle)
            ]
        );
        session
    }

    fn done(run: u64, status: RunStatus, execution_count: Option<u32>) -> KernelEvent {
        KernelEvent::Done {
            run: RunId(run),
            status,
            execution_count,
        }
    }

    #[test]
    fn done_waits_for_reply_then_idle() {
        let mut session = ready_session(Instant::now());
        assert!(session.execute(RunId(1), "m1".into()));
        session.handle_message(message("m1", Body::Status(Activity::Busy)));
        session.handle_message(message("m1", stdout("hi\n")));
        session.handle_message(message("m1", reply(RunStatus::Ok, 1)));
        // The reply alone is not enough: an output may still be on its way on iopub.
        session.handle_message(message("m1", stdout("late\n")));
        session.handle_message(message("m1", Body::Status(Activity::Idle)));
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Busy),
                KernelEvent::Output {
                    run: RunId(1),
                    output: Output::Stream {
                        name: StreamName::Stdout,
                        text: "hi\n".into()
                    }
                },
                KernelEvent::Output {
                    run: RunId(1),
                    output: Output::Stream {
                        name: StreamName::Stdout,
                        text: "late\n".into()
                    }
                },
                done(1, RunStatus::Ok, Some(1)),
                KernelEvent::Status(KernelStatus::Idle),
            ]
        );
        assert_eq!(session.pending_runs(), 0);
    }

    #[test]
    fn done_waits_for_idle_then_reply() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(7), "m7".into());
        session.handle_message(message("m7", Body::Status(Activity::Busy)));
        session.handle_message(message("m7", Body::Status(Activity::Idle)));
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Busy),
                KernelEvent::Status(KernelStatus::Idle)
            ]
        );
        session.handle_message(message("m7", reply(RunStatus::Error, 4)));
        assert_eq!(drain(&mut session), [done(7, RunStatus::Error, Some(4))]);
    }

    fn output(run: u64, text: &str) -> KernelEvent {
        KernelEvent::Output {
            run: RunId(run),
            output: Output::Stream {
                name: StreamName::Stdout,
                text: text.into(),
            },
        }
    }

    fn without_statuses(events: Vec<KernelEvent>) -> Vec<KernelEvent> {
        events
            .into_iter()
            .filter(|event| !matches!(event, KernelEvent::Status(_)))
            .collect()
    }

    #[test]
    fn a_late_reply_holds_the_next_runs_outputs_back() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "a".into());
        session.execute(RunId(2), "b".into());
        session.execute(RunId(3), "c".into());
        session.handle_message(message("a", stdout("a1")));
        session.handle_message(message("a", Body::Status(Activity::Idle)));
        // Run 1's reply is still on its way when runs 2 and 3 already print and finish.
        session.handle_message(message("b", stdout("b1")));
        session.handle_message(message("b", reply(RunStatus::Ok, 2)));
        session.handle_message(message("b", Body::Status(Activity::Idle)));
        session.handle_message(message("c", stdout("c1")));
        assert_eq!(without_statuses(drain(&mut session)), [output(1, "a1")]);
        session.handle_message(message("a", reply(RunStatus::Ok, 1)));
        assert_eq!(
            without_statuses(drain(&mut session)),
            [
                done(1, RunStatus::Ok, Some(1)),
                output(2, "b1"),
                done(2, RunStatus::Ok, Some(2)),
                output(3, "c1"),
            ]
        );
        // Run 3 is at the front now: its outputs flow straight through.
        session.handle_message(message("c", stdout("c2")));
        assert_eq!(drain(&mut session), [output(3, "c2")]);
    }

    #[test]
    fn runs_the_kernel_aborted_finish_in_order() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "a".into());
        session.execute(RunId(2), "b".into());
        // The second run's abort reply overtakes the first run's error reply.
        session.handle_message(message("b", reply(RunStatus::Aborted, 0)));
        session.handle_message(message("b", Body::Status(Activity::Idle)));
        session.handle_message(message("a", reply(RunStatus::Error, 1)));
        session.handle_message(message("a", Body::Status(Activity::Idle)));
        assert_eq!(
            without_statuses(drain(&mut session)),
            [
                done(1, RunStatus::Error, Some(1)),
                done(2, RunStatus::Aborted, Some(0))
            ]
        );
    }

    #[test]
    fn held_outputs_are_delivered_before_an_abort() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "a".into());
        session.execute(RunId(2), "b".into());
        session.handle_message(message("b", stdout("b1")));
        session.died(DeathCause::Exited { code: 1 });
        assert_eq!(
            without_statuses(drain(&mut session)),
            [
                done(1, RunStatus::Aborted, None),
                output(2, "b1"),
                done(2, RunStatus::Aborted, None),
            ]
        );
    }

    #[test]
    fn a_failed_send_at_the_front_lets_the_next_run_finish() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "a".into());
        session.execute(RunId(2), "b".into());
        session.handle_message(message("b", stdout("b1")));
        session.handle_message(message("b", reply(RunStatus::Ok, 1)));
        session.handle_message(message("b", Body::Status(Activity::Idle)));
        session.send_failed(RunId(1));
        assert_eq!(
            without_statuses(drain(&mut session)),
            [
                done(1, RunStatus::Aborted, None),
                output(2, "b1"),
                done(2, RunStatus::Ok, Some(1)),
            ]
        );
    }

    #[test]
    fn messages_for_unknown_requests_are_dropped() {
        let mut session = ready_session(Instant::now());
        session.handle_message(message("kernel-info", Body::Status(Activity::Busy)));
        session.handle_message(message("kernel-info", Body::KernelInfoReply));
        session.handle_message(Incoming {
            parent: None,
            body: Body::Ignored,
        });
        assert_eq!(drain(&mut session), []);
        assert_eq!(session.status(), &KernelStatus::Idle);
    }

    #[test]
    fn death_aborts_pending_runs_and_later_messages_are_dropped() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "m1".into());
        session.execute(RunId(2), "m2".into());
        let cause = DeathCause::Signaled {
            signal: 9,
            name: "SIGKILL".into(),
        };
        assert!(session.died(cause.clone()));
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Dead {
                    cause: cause.clone()
                }),
                done(1, RunStatus::Aborted, None),
                done(2, RunStatus::Aborted, None),
            ]
        );
        // An output flushed just before death arrives after the run was aborted.
        session.handle_message(message("m1", stdout("ghost")));
        assert!(!session.died(DeathCause::Exited { code: 1 }));
        assert_eq!(drain(&mut session), []);
        // While dead, new runs end at once.
        assert!(!session.execute(RunId(3), "m3".into()));
        assert_eq!(drain(&mut session), [done(3, RunStatus::Aborted, None)]);
    }

    #[test]
    fn restart_aborts_pending_runs_and_starts_over() {
        let now = Instant::now();
        let mut session = ready_session(now);
        session.execute(RunId(1), "m1".into());
        session.handle_message(message("m1", Body::Status(Activity::Busy)));
        drain(&mut session);
        session.restarting();
        assert_eq!(session.heartbeat_deadline(), None);
        session.starting();
        session.ready(now);
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Restarting),
                done(1, RunStatus::Aborted, None),
                KernelEvent::Status(KernelStatus::Starting),
                KernelEvent::Status(KernelStatus::Idle),
            ]
        );
        // A restart also revives a dead kernel.
        session.died(DeathCause::Exited { code: 0 });
        session.restarting();
        session.starting();
        session.ready(now);
        assert_eq!(session.status(), &KernelStatus::Idle);
        assert!(session.execute(RunId(2), "m2".into()));
    }

    #[test]
    fn send_failure_and_shutdown_abort_runs() {
        let mut session = ready_session(Instant::now());
        session.execute(RunId(1), "m1".into());
        session.execute(RunId(2), "m2".into());
        session.send_failed(RunId(2));
        session.send_failed(RunId(99));
        // Run 2 is over, but is reported only after run 1.
        assert_eq!(drain(&mut session), []);
        session.shutting_down();
        assert_eq!(
            drain(&mut session),
            [
                done(1, RunStatus::Aborted, None),
                done(2, RunStatus::Aborted, None)
            ]
        );
    }

    #[test]
    fn heartbeat_silence_beyond_the_timeout_is_death() {
        let start = Instant::now();
        let mut session = ready_session(start);
        session.execute(RunId(1), "m1".into());
        assert_eq!(session.heartbeat_deadline(), Some(start + TIMEOUT));
        assert_eq!(session.poll_heartbeat(start + TIMEOUT), None);

        let reply_at = start + Duration::from_millis(500);
        session.on_heartbeat_reply(reply_at);
        // A reply stamped earlier than one already seen does not move the deadline back.
        session.on_heartbeat_reply(start);
        assert_eq!(session.heartbeat_deadline(), Some(reply_at + TIMEOUT));
        assert_eq!(
            session.poll_heartbeat(start + TIMEOUT + Duration::from_millis(1)),
            None
        );

        let late = reply_at + Duration::from_millis(900);
        let cause = session.poll_heartbeat(late);
        assert_eq!(cause, Some(DeathCause::HeartbeatLost { silent_ms: 900 }));
        assert_eq!(
            drain(&mut session),
            [
                KernelEvent::Status(KernelStatus::Dead {
                    cause: DeathCause::HeartbeatLost { silent_ms: 900 }
                }),
                done(1, RunStatus::Aborted, None),
            ]
        );
        // Reported once; a dead kernel's heartbeat is not watched.
        assert_eq!(session.poll_heartbeat(late + TIMEOUT), None);
        assert_eq!(session.heartbeat_deadline(), None);
    }

    #[test]
    fn heartbeat_is_not_watched_before_the_kernel_is_ready() {
        let mut session = Session::new(TIMEOUT);
        session.starting();
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(session.poll_heartbeat(far), None);
        session.on_heartbeat_reply(far);
        assert_eq!(session.heartbeat_deadline(), None);
    }
}
