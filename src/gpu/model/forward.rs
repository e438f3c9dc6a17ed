//! The forward pass of [`Gpt2Gpu`]: the layers up to lnf in llm.c's order (the fused path's kernels
//! where it runs), the classifier chunk by chunk, the losses read back; and the logits, read
//! between a forward and the backward that overwrites them.

use anyhow::{bail, Context, Result};
use cudarc::driver::CudaView;

use super::{
    classifier_chunks, lm_head_forward, matmul_forward_on, views, Gpt2Gpu, ModelFloat, Stage,
};
use crate::activations::{layer_slot, residual_slot, Acts};
use crate::cpu::model::check_forward;
use crate::engine::Recompute;
use crate::gpu::float::to_f32_vec;
use crate::gpu::graphs::Piece;
use crate::gpu::launch::{buckets_len, token_buckets};
use crate::gpu::nvtx;
use crate::params::{param_sizes, Params};
use crate::profile::{Cost, Family, Pass};

impl<T: ModelFloat> Gpt2Gpu<T> {
    /// Runs the forward pass on inputs (B, T); with targets also the loss, which it returns (the
    /// mean over B*T, summed in f64 on the host from the (B, T) losses: the one read-back of a
    /// forward). The logits of the last forward are in `logits()` until the next backward.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>> {
        let _phase = nvtx::range(c"forward");
        self.prof.set_pass(Pass::Forward);
        let cfg = self.config;
        check_forward(&cfg, (self.max_b, self.max_t), inputs, targets, b, t)?;
        if targets.is_none() && b > self.chunk_b {
            bail!(
                "a forward without targets keeps the logits, which hold {} at once (the \
                 classifier's chunk); this batch has B = {b}",
                crate::text::count(self.chunk_b, "sequence", "sequences")
            );
        }
        self.stage = Stage::Empty;
        self.losses.clear();
        self.b = b;
        self.t = t;
        let bt = b * t;
        self.gpu
            .upload_into(inputs, &mut self.inputs_dev.slice_mut(..bt))
            .context("forward: uploading the inputs")?;
        if let Some(tg) = targets {
            self.gpu
                .upload_into(tg, &mut self.targets_dev.slice_mut(..bt))
                .context("forward: uploading the targets")?;
        }
        let with_targets = targets.is_some();
        let piece = Piece::Forward {
            b,
            t,
            targets: with_targets,
        };
        self.run_piece(piece, |m| {
            m.forward_layers(b, t)?;
            m.classifier_forward(b, t, with_targets)
        })
        .context("the GPU forward pass failed")?;
        if !with_targets {
            self.stage = Stage::Forward { targets: false };
            return Ok(None);
        }
        // for the backward's encoder (dwte): the positions grouped by token, sorted on the host
        // while the GPU runs the forward, and uploaded (after it, in stream order) so that the
        // backward pass is launches only
        self.gpu
            .upload_into(
                &token_buckets(inputs),
                &mut self.buckets_dev.slice_mut(..buckets_len(bt)),
            )
            .context("forward: uploading the token buckets")?;
        let losses = self
            .download_losses(b, t)
            .context("the GPU forward pass failed")?;
        let mean = losses.iter().map(|&x| x as f64).sum::<f64>() / bt as f64;
        self.losses = losses;
        self.stage = Stage::Forward { targets: true };
        Ok(Some(mean as f32))
    }

    /// The layers of the forward pass up to lnf (`classifier_forward` then computes the logits), for
    /// the (B, T) tokens in `inputs_dev`.
    /// On the fused path the residual add that ends a layer also computes the next layernorm (the
    /// next layer's ln1, or lnf after the last layer), the MLP's first matmul applies the bias
    /// and GELU in its epilogue, and attention is one flash kernel.
    fn forward_layers(&mut self, b: usize, t: usize) -> Result<()> {
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let cfg = self.config;
        let fused = self.fused;
        let gpu = &self.gpu;
        let prof = &mut self.prof;
        let (l_count, nh, c) = (cfg.num_layers, cfg.num_heads, cfg.channels);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let inputs = self.inputs_dev.slice(..b * t);
        let mut scratch = self.att_scratch.slice_mut(..);
        let (btc, bt, att_n, bnht) = (b * t * c, b * t, b * nh * t * t, b * nh * t);
        let (c3, c4) = (3 * c, 4 * c);
        // where each layer's tensors lie: every layer's are kept for the backward, or for
        // forwards only one layer's and two residual streams (see `arena_sizes`)
        let forwards_only = self.forwards_only;
        let slot = |l: usize| layer_slot(l, forwards_only);
        let rslot = |l: usize| residual_slot(l, forwards_only);

        prof.run(Family::Encoder, Cost::encoder_forward(b, t, c), || {
            gpu.encoder_forward(&mut a.encoded, &inputs, &p.wte, &p.wpe, b, t, c)
        })?;
        for l in 0..l_count {
            let w = p.block(l, l_count);
            let _layer = nvtx::range(nvtx::layer_name(l));
            // this layer's input (the encoding or the previous layer's output) and its output,
            // which lies above or (forwards only, in turn) below the input in the arena
            let (out, input) = (rslot(l), l.checked_sub(1).map(rslot));
            let split = match input {
                Some(i) if i > out => i * btc,
                _ => out * btc,
            };
            let (mut lo, mut hi) = a.residual3.split_at_mut(split);
            let (residual, mut residual3) = match input {
                None => (a.encoded.as_view(), hi.slice_mut(..btc)),
                Some(i) if i < out => (lo.slice(i * btc..(i + 1) * btc), hi.slice_mut(..btc)),
                Some(_) => (hi.slice(..btc), lo.slice_mut(out * btc..(out + 1) * btc)),
            };
            let k = slot(l);
            let mut qkv = a.qkv.slice_mut(k * 3 * btc..(k + 1) * 3 * btc);
            let mut atty = a.atty.slice_mut(k * btc..(k + 1) * btc);
            let mut attproj = a.attproj.slice_mut(k * btc..(k + 1) * btc);
            let mut residual2 = a.residual2.slice_mut(k * btc..(k + 1) * btc);
            let mut ln2 = a.ln2.slice_mut(k * btc..(k + 1) * btc);
            let mut ln2_mean = s.ln2_mean.slice_mut(k * bt..(k + 1) * bt);
            let mut ln2_rstd = s.ln2_rstd.slice_mut(k * bt..(k + 1) * bt);
            let mut fch = a.fch.slice_mut(k * 4 * btc..(k + 1) * 4 * btc);
            // (recomputed in the backward: every layer's in the one layer's buffer)
            let gelu_at = match self.recompute {
                Recompute::None => k * 4 * btc,
                Recompute::Gelu => 0,
            };
            let mut fch_gelu = a.fch_gelu.slice_mut(gelu_at..gelu_at + 4 * btc);
            let mut fcproj = a.fcproj.slice_mut(k * btc..(k + 1) * btc);

            // on the fused path, the previous layer's last kernel already wrote this ln1
            if !fused || l == 0 {
                let mut ln1 = a.ln1.slice_mut(k * btc..(k + 1) * btc);
                let mut ln1_mean = s.ln1_mean.slice_mut(k * bt..(k + 1) * bt);
                let mut ln1_rstd = s.ln1_rstd.slice_mut(k * bt..(k + 1) * bt);
                prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                    gpu.layernorm_forward(
                        &mut ln1,
                        &mut ln1_mean,
                        &mut ln1_rstd,
                        &residual,
                        &w.ln1w,
                        &w.ln1b,
                        b,
                        t,
                        c,
                    )
                })?;
            }
            let ln1 = a.ln1.slice(k * btc..(k + 1) * btc);
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c3), || {
                matmul_forward_on(
                    gpu,
                    fused,
                    &mut qkv,
                    &ln1,
                    &w.qkvw,
                    Some(&w.qkvb),
                    b,
                    t,
                    c,
                    c3,
                )
            })?;
            if fused {
                let mut lse = self.lse.slice_mut(k * bnht..(k + 1) * bnht);
                prof.run(Family::Attention, Cost::attention_forward(b, t, c), || {
                    gpu.flash_attention_forward(&mut atty, &mut lse, &qkv.as_view(), b, t, c, nh)
                })?;
            } else {
                let mut preatt = a.preatt.slice_mut(k * att_n..(k + 1) * att_n);
                let mut att = a.att.slice_mut(k * att_n..(k + 1) * att_n);
                prof.run(Family::Attention, Cost::attention_forward(b, t, c), || {
                    gpu.attention_forward(
                        &mut atty,
                        &mut preatt,
                        &mut att,
                        &qkv.as_view(),
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch,
                    )
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c), || {
                let (atty, wb) = (atty.as_view(), Some(&w.attprojb));
                matmul_forward_on(gpu, fused, &mut attproj, &atty, &w.attprojw, wb, b, t, c, c)
            })?;
            if fused {
                let cost = Cost::residual_layernorm_forward(b, t, c);
                prof.run(Family::Layernorm, cost, || {
                    gpu.residual_layernorm_forward(
                        &mut residual2,
                        &mut ln2,
                        &mut ln2_mean,
                        &mut ln2_rstd,
                        &residual,
                        &attproj.as_view(),
                        &w.ln2w,
                        &w.ln2b,
                        b,
                        t,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Residual, Cost::residual_forward(btc), || {
                    gpu.residual_forward(&mut residual2, &residual, &attproj.as_view())
                })?;
                prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                    gpu.layernorm_forward(
                        &mut ln2,
                        &mut ln2_mean,
                        &mut ln2_rstd,
                        &residual2.as_view(),
                        &w.ln2w,
                        &w.ln2b,
                        b,
                        t,
                        c,
                    )
                })?;
            }
            if fused {
                prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c4), || {
                    let ln2 = ln2.as_view();
                    gpu.matmul_forward_gelu_lt(
                        &mut fch_gelu,
                        &mut fch,
                        &ln2,
                        &w.fcw,
                        &w.fcb,
                        b,
                        t,
                        c,
                        c4,
                    )
                })?;
            } else {
                prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c4), || {
                    gpu.matmul_forward(&mut fch, &ln2.as_view(), &w.fcw, Some(&w.fcb), b, t, c, c4)
                })?;
                prof.run(Family::Gelu, Cost::gelu_forward(4 * btc), || {
                    gpu.gelu_forward(&mut fch_gelu, &fch.as_view())
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c4, c), || {
                let (x, wb) = (fch_gelu.as_view(), Some(&w.fcprojb));
                matmul_forward_on(gpu, fused, &mut fcproj, &x, &w.fcprojw, wb, b, t, c4, c)
            })?;
            if fused {
                // residual3 = residual2 + fcproj, and the next layernorm of it: the next layer's
                // ln1, or lnf after the last layer
                let (mut next_ln, mut next_mean, mut next_rstd, next_w, next_b) = if l + 1 < l_count
                {
                    let (nw, nk) = (p.block(l + 1, l_count), slot(l + 1));
                    (
                        a.ln1.slice_mut(nk * btc..(nk + 1) * btc),
                        s.ln1_mean.slice_mut(nk * bt..(nk + 1) * bt),
                        s.ln1_rstd.slice_mut(nk * bt..(nk + 1) * bt),
                        nw.ln1w,
                        nw.ln1b,
                    )
                } else {
                    (
                        a.lnf.slice_mut(..),
                        s.lnf_mean.slice_mut(..),
                        s.lnf_rstd.slice_mut(..),
                        p.lnfw.slice(..),
                        p.lnfb.slice(..),
                    )
                };
                let cost = Cost::residual_layernorm_forward(b, t, c);
                prof.run(Family::Layernorm, cost, || {
                    gpu.residual_layernorm_forward(
                        &mut residual3,
                        &mut next_ln,
                        &mut next_mean,
                        &mut next_rstd,
                        &residual2.as_view(),
                        &fcproj.as_view(),
                        &next_w,
                        &next_b,
                        b,
                        t,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Residual, Cost::residual_forward(btc), || {
                    gpu.residual_forward(&mut residual3, &residual2.as_view(), &fcproj.as_view())
                })?;
            }
        }
        if !fused {
            let last = rslot(l_count - 1);
            let last = a.residual3.slice(last * btc..(last + 1) * btc);
            prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                gpu.layernorm_forward(
                    &mut a.lnf,
                    &mut s.lnf_mean,
                    &mut s.lnf_rstd,
                    &last,
                    &p.lnfw,
                    &p.lnfb,
                    b,
                    t,
                    c,
                )
            })?;
        }
        Ok(())
    }

    /// The logits (B, T, Vp) = lnf . wte^T and, with targets, the losses (B, T) against
    /// `targets_dev` into the stats arena, with each row's softmax max and sum: chunk by chunk
    /// (one chunk when the logits hold the whole batch), so that after it the logits of the last
    /// chunk are in place.
    fn classifier_forward(&mut self, b: usize, t: usize, targets: bool) -> Result<()> {
        let cfg = self.config;
        let (c, v, vp) = (cfg.channels, cfg.vocab_size, cfg.padded_vocab_size);
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let chunks = classifier_chunks(b, self.chunk_b);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let (gpu, fused, prof) = (&self.gpu, self.fused, &mut self.prof);
        for (b0, bc) in chunks {
            let rows = b0 * t..(b0 + bc) * t;
            let mut logits = a.logits.slice_mut(..bc * t * vp);
            let lnf = a.lnf.slice(rows.start * c..rows.end * c);
            lm_head_forward(gpu, fused, prof, &mut logits, &lnf, &p.wte, bc, t, c, vp)?;
            if !targets {
                continue;
            }
            let targets = self.targets_dev.slice(rows.clone());
            let mut losses = s.losses.slice_mut(rows.clone());
            let mut row_stats = self.row_stats.slice_mut(2 * rows.start..2 * rows.end);
            prof.run(
                Family::Classifier,
                Cost::classifier_losses(bc, t, v),
                || {
                    gpu.classifier_losses(
                        &logits.as_view(),
                        &mut losses,
                        &targets,
                        bc,
                        t,
                        v,
                        vp,
                        Some(&mut row_stats),
                    )
                },
            )?;
        }
        Ok(())
    }

    /// The losses (B, T) that [`Gpt2Gpu::classifier_forward`] computed, read back to the host.
    fn download_losses(&mut self, b: usize, t: usize) -> Result<Vec<f32>> {
        let (_, stat_sizes) = self.arena_sizes(b, t)?;
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        self.gpu.download(&s.losses)
    }

    /// An error unless the logits of the last forward are still in place.
    fn check_logits(&self) -> Result<()> {
        match self.stage {
            Stage::Forward { .. } if self.b > self.chunk_b => bail!(
                "the logits of the last forward (B = {}) were computed in chunks of {} and not \
                 kept: read logits with a batch of at most that many, or without chunks",
                self.b,
                crate::text::count(self.chunk_b, "sequence", "sequences")
            ),
            Stage::Forward { .. } => Ok(()),
            Stage::Empty => bail!("no logits: run a forward pass first"),
            Stage::Backward => bail!(
                "the logits of the last forward are gone: on the GPU the backward pass overwrites \
                 them with their gradient; read them between forward and backward"
            ),
        }
    }

    /// The logits (B, T, Vp) of the last forward, in place.
    fn logits_view(&self) -> Result<CudaView<'_, T>> {
        let (act_sizes, _) = self.arena_sizes(self.b, self.t)?;
        let all = views(self.acts.as_view(), act_sizes.into_array());
        Ok(Acts::from_array(all).logits)
    }

    /// The logits (B, T, Vp) of the last forward, copied to the host (before backward).
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        self.check_logits()?;
        let logits = self.logits_view()?;
        Ok(to_f32_vec(&self.gpu.download(&logits)?))
    }

    /// The logits (Vp) at batch row `bi`, position `ti` of the last forward: only that row is
    /// copied to the host (before backward).
    pub fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        self.check_logits()?;
        let (b, t, vp) = (self.b, self.t, self.config.padded_vocab_size);
        if bi >= b || ti >= t {
            bail!("position ({bi}, {ti}) is outside the last forward's batch of {b}x{t}");
        }
        let row = bi * t + ti;
        let logits = self.logits_view()?;
        Ok(to_f32_vec(
            &self.gpu.download(&logits.slice(row * vp..(row + 1) * vp))?,
        ))
    }
}
