//! `--profile` on the GPU: [`GpuProfiler`] wraps every launcher call of the model in an NVTX range
//! named after its kernel family and, while a step is being profiled, between two CUDA events on
//! the engine's stream. At the end of the step it waits for the stream and adds each call's
//! event-to-event time and its `profile::Cost` to a `profile::Profile`, and the time between two
//! events around the whole step as the step's time.
//!
//! When no step is being profiled a call costs one branch and the NVTX range: no event is
//! recorded. The events are created on the first profiled step and reused after it (two per call,
//! about 20*L + 12 calls a micro-batch), so a profiled step allocates nothing after the first.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use super::nvtx;
use crate::profile::{Cost, Family, Pass, Profile};

/// How the GPU engine times its kernel families, for the table's title.
pub const METHOD: &str = "CUDA events around each kernel-family call";

/// See the file comment.
pub(super) struct GpuProfiler {
    stream: Arc<CudaStream>,
    /// Whether calls are timed now (between `begin_step` and `end_step`).
    recording: bool,
    /// Reused from step to step: `events[2i]` and `events[2i + 1]` bracket `calls[i]`.
    events: Vec<CudaEvent>,
    /// The pass the model is in (set by its forward, backward and update): the calls' pass.
    pass: Pass,
    /// The family, pass and cost of each call of the step being profiled.
    calls: Vec<(Family, Pass, Cost)>,
    /// Around the whole step: (start, end).
    step_events: Option<(CudaEvent, CudaEvent)>,
    totals: Profile,
}

impl GpuProfiler {
    /// A profiler for the work on `stream`, recording nothing until [`GpuProfiler::begin_step`].
    /// `elem_bytes`: bytes per element of the model's storage type (4 or 2).
    pub(super) fn new(stream: Arc<CudaStream>, elem_bytes: usize) -> GpuProfiler {
        GpuProfiler {
            stream,
            recording: false,
            events: Vec::new(),
            pass: Pass::Forward,
            calls: Vec::new(),
            step_events: None,
            totals: Profile::new(METHOD, elem_bytes),
        }
    }

    /// The calls from here on belong to `pass` (in the table's "fwd ms" and "bwd ms" columns).
    pub(super) fn set_pass(&mut self, pass: Pass) {
        self.pass = pass;
    }

    /// Whether a step is being profiled now (its calls timed).
    pub(super) fn recording(&self) -> bool {
        self.recording
    }

    /// A timing event on the stream's context.
    fn new_event(&self) -> Result<CudaEvent> {
        self.stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .context("profile: creating a CUDA event failed")
    }

    /// Runs `call` (one launcher call of `family`, costing `cost`) inside an NVTX range named
    /// after the family and, while a step is profiled, between two events.
    #[inline]
    pub(super) fn run<T>(
        &mut self,
        family: Family,
        cost: Cost,
        call: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _range = nvtx::range(family.label());
        if !self.recording {
            return call();
        }
        let i = self.calls.len();
        while self.events.len() < 2 * i + 2 {
            let event = self.new_event()?;
            self.events.push(event);
        }
        self.events[2 * i]
            .record(&self.stream)
            .context("profile: recording a CUDA event failed")?;
        let out = call()?;
        self.events[2 * i + 1]
            .record(&self.stream)
            .context("profile: recording a CUDA event failed")?;
        self.calls.push((family, self.pass, cost));
        Ok(out)
    }

    /// Starts profiling a step: the calls from here to [`GpuProfiler::end_step`] are timed.
    pub(super) fn begin_step(&mut self) -> Result<()> {
        if self.step_events.is_none() {
            self.step_events = Some((self.new_event()?, self.new_event()?));
        }
        let (start, _) = self.step_events.as_ref().expect("created above");
        start
            .record(&self.stream)
            .context("profile: recording a CUDA event failed")?;
        self.calls.clear();
        self.recording = true;
        Ok(())
    }

    /// Ends the step begun by [`GpuProfiler::begin_step`]: waits for the stream and adds the
    /// step's calls and time to the totals.
    pub(super) fn end_step(&mut self) -> Result<()> {
        if !self.recording {
            bail!("profile: a step ended that was not begun (profile_step_begin was not called)");
        }
        self.recording = false;
        let (start, end) = self.step_events.as_ref().expect("begin_step created them");
        end.record(&self.stream)
            .context("profile: recording a CUDA event failed")?;
        // waits for the whole step, and so for every event recorded in it
        let step_ms = start
            .elapsed_ms(end)
            .context("profile: timing the step failed")?;
        for (i, &(family, pass, cost)) in self.calls.iter().enumerate() {
            let ms = self.events[2 * i]
                .elapsed_ms(&self.events[2 * i + 1])
                .with_context(|| format!("profile: timing a {} call failed", family.name()))?;
            self.totals.add_call(family, pass, ms as f64, cost);
        }
        self.totals.add_step(step_ms as f64);
        self.calls.clear();
        Ok(())
    }

    /// Ends the step begun by [`GpuProfiler::begin_step`] without adding it to the totals (its
    /// events are recorded again by the next profiled step).
    pub(super) fn discard_step(&mut self) -> Result<()> {
        if !self.recording {
            bail!(
                "profile: a step was discarded that was not begun (profile_step_begin was not \
                 called)"
            );
        }
        self.recording = false;
        self.calls.clear();
        Ok(())
    }

    /// The totals of the steps profiled so far.
    pub(super) fn totals(&self) -> &Profile {
        &self.totals
    }
}
