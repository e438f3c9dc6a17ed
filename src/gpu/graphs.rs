//! CUDA graphs for the pieces of a training step: the model's forward pass (up to the losses) and
//! its backward pass are each captured once per shape and then replayed with one launch, instead
//! of a few hundred kernel launches from the host. At small models (d6, T=64) the host's launch
//! time is most of the step; at d12 and T=1024 it hides behind the kernels.
//!
//! What makes a piece replayable: every launch in it depends only on the piece's key (B, T, and
//! the loss scale of a backward) and on buffers at fixed addresses (the model's arenas; the inputs,
//! targets and token buckets are uploaded to fixed buffers before the piece runs). The launchers'
//! small stream-ordered scratch allocations become the graph's memory nodes; what a launcher
//! allocates once and reuses must outlive the graphs (cuBLASLt's ones vectors are never freed). NVTX ranges are host
//! calls: they mark the capture, not the replays (`--no-cuda-graphs` for a per-kernel nsys
//! timeline).
//!
//! The first run of a key is eager (it also warms up cuBLAS and picks the cuBLASLt algorithms,
//! which must not happen during a capture); the second is captured and launched; later runs
//! replay. Generation (a forward without targets) always runs eagerly (see [`StepGraphs::plan`]).
//! A capture that fails turns the graphs off for the rest of the run, with a note on stderr, and
//! the piece runs eagerly: graphs change the speed, never the numbers (the launches are the same,
//! in the same order, on the same stream).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

/// A piece of a step and the values its launches depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Piece {
    /// The forward pass of a (B, T) batch, with the losses when it has targets.
    Forward { b: usize, t: usize, targets: bool },
    /// The backward pass of a (B, T) batch with this loss scale (its bits).
    Backward { b: usize, t: usize, loss_scale: u32 },
}

impl std::fmt::Display for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Piece::Forward { b, t, targets } => {
                let with = if targets { ", with its losses" } else { "" };
                write!(f, "the forward pass of a batch of {b}x{t}{with}")
            }
            Piece::Backward { b, t, loss_scale } => write!(
                f,
                "the backward pass of a batch of {b}x{t} (loss scale {})",
                f32::from_bits(loss_scale)
            ),
        }
    }
}

/// What [`StepGraphs::run`] does with a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Launch the kernels one by one.
    Eager,
    /// Capture the launches into a graph, then launch the graph.
    Capture,
    /// Launch the graph captured before.
    Replay,
}

/// The pieces captured so far, and whether graphs are on.
pub(super) struct StepGraphs {
    enabled: bool,
    /// The pieces that ran eagerly once (their warm-up).
    seen: HashSet<Piece>,
    graphs: HashMap<Piece, CudaGraph>,
}

impl StepGraphs {
    pub(super) fn new(enabled: bool) -> StepGraphs {
        StepGraphs {
            enabled,
            seen: HashSet::new(),
            graphs: HashMap::new(),
        }
    }

    /// Turns graphs on or off; off drops the graphs captured so far.
    pub(super) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.clear();
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Forgets every graph and warm-up (after a change the captured launches would not see, such
    /// as cuBLAS's math mode).
    pub(super) fn clear(&mut self) {
        self.seen.clear();
        self.graphs.clear();
    }

    /// How many pieces are captured.
    pub(super) fn captured(&self) -> usize {
        self.graphs.len()
    }

    /// What to do with `piece` now: eager when graphs are off or `eager` is asked for (a profiled
    /// step, whose events must sit between the kernels), and the first time a piece runs; then
    /// capture; then replay. A forward without targets is always eager: it is generation, whose T
    /// grows by one with every token, so a sample drawn twice (`--sample-every`) would capture a
    /// graph for every length, each replayed once a sample.
    pub(super) fn plan(&self, piece: Piece, eager: bool) -> Action {
        if !self.graphable(piece, eager) {
            Action::Eager
        } else if self.graphs.contains_key(&piece) {
            Action::Replay
        } else if self.seen.contains(&piece) {
            Action::Capture
        } else {
            Action::Eager
        }
    }

    /// Whether `piece` may run as a graph now: graphs are on, the step is not profiled (`eager`),
    /// and it is not generation (a forward without targets).
    fn graphable(&self, piece: Piece, eager: bool) -> bool {
        self.enabled && !eager && !matches!(piece, Piece::Forward { targets: false, .. })
    }

    /// Runs `piece`: `work` launches its kernels on `stream` (see [`StepGraphs::plan`]).
    pub(super) fn run(
        &mut self,
        stream: &Arc<CudaStream>,
        piece: Piece,
        eager: bool,
        mut work: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        match self.plan(piece, eager) {
            Action::Eager => {
                work()?;
                if self.graphable(piece, eager) {
                    // its warm-up: captured next time
                    self.seen.insert(piece);
                }
                Ok(())
            }
            Action::Replay => self.graphs[&piece]
                .launch()
                .map_err(|e| anyhow!("launching the CUDA graph of {piece} failed: {e}")),
            Action::Capture => match capture(stream, &mut work) {
                Ok(graph) => {
                    graph
                        .launch()
                        .map_err(|e| anyhow!("launching the CUDA graph of {piece} failed: {e}"))?;
                    self.graphs.insert(piece, graph);
                    Ok(())
                }
                Err(why) => {
                    crate::errln!(
                        "note: capturing a CUDA graph of {piece} failed ({why:#}); running \
                         without CUDA graphs"
                    );
                    self.set_enabled(false);
                    work()
                }
            },
        }
    }
}

/// The launches of `work` on `stream`, captured and instantiated; an error (with the stream out of
/// capture mode and no error left pending in the context) when the capture or `work` fails.
fn capture(stream: &Arc<CudaStream>, work: &mut impl FnMut() -> Result<()>) -> Result<CudaGraph> {
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| anyhow!("cuStreamBeginCapture: {e}"))?;
    let worked = work();
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    // an error cudarc recorded during the capture (e.g. a free in a buffer's drop) must not
    // surface later, in an unrelated call
    let recorded = stream.context().check_err();
    worked?;
    recorded.map_err(|e| anyhow!("during the capture: {e}"))?;
    match graph {
        Ok(Some(graph)) => Ok(graph),
        Ok(None) => Err(anyhow!("the capture recorded no work")),
        Err(e) => Err(anyhow!("cuStreamEndCapture / cuGraphInstantiate: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Piece = Piece::Forward {
        b: 4,
        t: 64,
        targets: true,
    };

    #[test]
    fn a_piece_runs_eagerly_then_is_captured_then_replayed() {
        let mut g = StepGraphs::new(true);
        assert_eq!(g.plan(F, false), Action::Eager);
        g.seen.insert(F);
        assert_eq!(g.plan(F, false), Action::Capture);
        // another shape starts over
        let other = Piece::Forward {
            b: 2,
            t: 64,
            targets: true,
        };
        assert_eq!(g.plan(other, false), Action::Eager);
        // a profiled step is always eager
        assert_eq!(g.plan(F, true), Action::Eager);
        // and generation (a forward without targets), however often its shape has run
        let generation = Piece::Forward {
            b: 1,
            t: 5,
            targets: false,
        };
        g.seen.insert(generation);
        assert_eq!(g.plan(generation, false), Action::Eager);
    }

    #[test]
    fn graphs_off_is_always_eager_and_forgets_the_warm_ups() {
        let mut g = StepGraphs::new(true);
        g.seen.insert(F);
        g.set_enabled(false);
        assert!(!g.enabled());
        assert_eq!(g.plan(F, false), Action::Eager);
        g.set_enabled(true);
        assert_eq!(
            g.plan(F, false),
            Action::Eager,
            "the warm-up is needed again"
        );
        assert_eq!(g.captured(), 0);
    }
}
