//! [`Kernel`]: the commands the document core gives a kernel and gets an answer to at once.
//!
//! Only the two commands that answer synchronously are here: queueing a run and interrupting.
//! Everything the kernel does later (status, outputs, the end of each run) reaches the core as a
//! [`KernelEvent`](crate::kernel::KernelEvent) through
//! [`DocumentCore::handle_kernel_event`](super::DocumentCore::handle_kernel_event). Restarting
//! and shutting down take time, so the core asks for them as effects
//! ([`Effect::RestartKernel`](super::Effect::RestartKernel), [`Effect::Stop`](super::Effect::Stop))
//! and the driver does them.

use std::sync::Arc;

use airlock_protocol::RunId;

/// A kernel as the document core drives it.
///
/// What an implementation must guarantee (the core's "exactly one `Done` per run" rests on it):
/// - `execute` does not block: it queues the run and returns. A run it accepted (`Ok`) ends with
///   exactly one `KernelEvent::Done`, after all of its outputs and after the `Done` of every run
///   accepted before it: `Ok`/`Error` from the kernel, `Aborted` when the kernel aborted it, was
///   restarted, died or shut down. A run it refused (`Err`) gets no event at all.
/// - `interrupt` does not block either. A running run usually ends as `Error`, the runs queued
///   behind it as `Aborted`; it fails while no kernel process runs.
/// - Death is reported as `KernelEvent::Status(KernelStatus::Dead { .. })`.
///
/// The node's kernel is [`KernelBridge`](crate::kernel::KernelBridge) (its impl lives beside it);
/// the core's tests use a scripted fake (`FakeKernel`).
pub trait Kernel {
    /// Why a command failed; shown to the client that asked.
    type Error: std::fmt::Display;
    /// Queues `code` as run `run`; see the trait documentation.
    fn execute(&self, run: RunId, code: &str, store_history: bool) -> Result<(), Self::Error>;
    /// Interrupts whatever the kernel is running.
    fn interrupt(&self) -> Result<(), Self::Error>;
}

impl<K: Kernel + ?Sized> Kernel for Arc<K> {
    type Error = K::Error;

    fn execute(&self, run: RunId, code: &str, store_history: bool) -> Result<(), K::Error> {
        (**self).execute(run, code, store_history)
    }

    fn interrupt(&self) -> Result<(), K::Error> {
        (**self).interrupt()
    }
}
