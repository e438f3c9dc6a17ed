//! The backward pass of [`Gpt2Gpu`]: the forward read in reverse, the classifier's chunks last
//! first, one layer's activation gradients reused by every layer, and the residual stream's
//! gradient updated in place through the layers.

use anyhow::{bail, Context, Result};

use super::{
    classifier_chunks, lm_head_forward, matmul_backward_on, views, Gpt2Gpu, LayerGrads, ModelFloat,
    Stage,
};
use crate::activations::Acts;
use crate::engine::Recompute;
use crate::gpu::graphs::Piece;
use crate::gpu::launch::buckets_len;
use crate::gpu::nvtx;
use crate::params::{param_sizes, Params};
use crate::profile::{Cost, Family, Pass};

impl<T: ModelFloat> Gpt2Gpu<T> {
    /// Sets every parameter gradient to zero (before the first micro-batch of a step).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.check_trains("zero_grad")?;
        let _phase = nvtx::range(c"zero_grad");
        self.gpu
            .memset_zero(&mut self.grads.slice_mut(..))
            .context("zero_grad")
    }

    /// The backward pass of the last forward (which must have had targets): adds the gradient of
    /// `loss_scale * mean loss` to the gradients. Overwrites the logits with their gradient.
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        self.check_trains("backward")?;
        let _phase = nvtx::range(c"backward");
        self.prof.set_pass(Pass::Backward);
        match self.stage {
            Stage::Forward { targets: true } => {}
            Stage::Forward { targets: false } => {
                bail!("backward needs a forward pass with targets; the last one had none")
            }
            Stage::Empty => bail!("backward before forward: run a forward pass with targets"),
            Stage::Backward => bail!(
                "backward ran already for this forward (it consumed the logits); run forward again"
            ),
        }
        // whatever happens below, the logits are no longer the forward's
        self.stage = Stage::Backward;
        let (b, t) = (self.b, self.t);
        let piece = Piece::Backward {
            b,
            t,
            loss_scale: loss_scale.to_bits(),
        };
        self.run_piece(piece, |m| m.backward_layers(loss_scale))
            .context("the GPU backward pass failed")
    }

    fn backward_layers(&mut self, loss_scale: f32) -> Result<()> {
        let (b, t) = (self.b, self.t);
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let cfg = self.config;
        let fused = self.fused;
        let gpu = &self.gpu;
        let prof = &mut self.prof;
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let (btc, bt, att_n, bnht) = (b * t * c, b * t, b * nh * t * t, b * nh * t);
        let chunks = classifier_chunks(b, self.chunk_b);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        params_mut!(g = self.grads.slice_mut(..), param_sizes(&cfg));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let dlayer_sizes =
            LayerGrads::sizes(&cfg, b, t, fused).context("layer gradient sizes overflow")?;
        let dlayer_n = dlayer_sizes
            .total()
            .context("layer gradient sizes overflow")?;
        let buckets = self.buckets_dev.slice(..buckets_len(bt));
        let targets = self.targets_dev.slice(..bt);
        let mut scratch = self.att_scratch.slice_mut(..);
        let mut scratch32 = self.att_scratch32.slice_mut(..);
        let mut dlnf = self.dlnf.slice_mut(..btc);
        // the gradient of the residual stream, as llm.c keeps it: a residual add's backward is the
        // identity, so the products read dres directly (where dfcproj and dattproj would be copies
        // of it) and each layernorm's backward adds into it, turning the gradient of a layer's
        // output into that of residual2 and then of the layer's input, in place
        let mut dres = self.dresidual.slice_mut(..btc);

        // the loss is the mean over B*T: each position's loss gets 1/(B*T); logits -> dlogits,
        // with each row's softmax max and sum as the forward's losses saved them; then dlnf and
        // dwte. In chunks (see `new_with_options`), last chunk first: its logits are the ones the
        // forward left in place; every other chunk's are computed again.
        for (b0, bc) in chunks.into_iter().rev() {
            let rows = b0 * t..(b0 + bc) * t;
            let (rc, lnf) = (rows.start * c..rows.end * c, a.lnf.as_view());
            let lnf = lnf.slice(rc.clone());
            let mut logits = a.logits.slice_mut(..bc * t * vp);
            if b0 + bc < b {
                lm_head_forward(gpu, fused, prof, &mut logits, &lnf, &p.wte, bc, t, c, vp)?;
            }
            let row_stats = self.row_stats.slice(2 * rows.start..2 * rows.end);
            let targets = targets.slice(rows.clone());
            let mut losses = s.losses.slice_mut(rows.clone());
            prof.run(
                Family::Classifier,
                Cost::classifier_fused(bc, t, v, vp),
                || {
                    gpu.fused_classifier(
                        &mut logits,
                        &mut losses,
                        loss_scale / bt as f32,
                        &targets,
                        bc,
                        t,
                        v,
                        vp,
                        Some(&row_stats),
                    )
                },
            )?;
            let mut dlnf = dlnf.slice_mut(rc);
            prof.run(Family::Matmul, Cost::matmul_backward(bc, t, c, vp), || {
                let dlogits = logits.as_view();
                matmul_backward_on(
                    gpu, fused, &mut dlnf, &mut g.wte, None, &dlogits, &lnf, &p.wte, bc, t, c, vp,
                )
            })?;
        }
        let last = (l_count - 1) * btc;
        gpu.memset_zero(&mut dres)?;
        prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
            gpu.layernorm_backward(
                &mut dres,
                &mut g.lnfw,
                &mut g.lnfb,
                &dlnf.as_view(),
                &a.residual3.slice(last..last + btc),
                &p.lnfw,
                &s.lnf_mean.as_view(),
                &s.lnf_rstd.as_view(),
                b,
                t,
                c,
            )
        })?;
        for l in (0..l_count).rev() {
            let w = p.block(l, l_count);
            let _layer = nvtx::range(nvtx::layer_name(l));
            let (c1, c3, c4) = (c, 3 * c, 4 * c);
            let residual = if l == 0 {
                a.encoded.as_view()
            } else {
                a.residual3.slice((l - 1) * btc..l * btc)
            };
            // the products overwrite their input gradients; dfch (plain path: gelu_backward) and
            // dqkv (attention) accumulate, from zero
            let dl = self.dlayer.slice_mut(..dlayer_n);
            layer_grads_mut!(d = dl, dlayer_sizes);
            gpu.memset_zero(&mut d.qkv)?;

            // dres is the gradient of the layer's output, residual3 = residual2 + fcproj
            let fch = a.fch.slice(l * 4 * btc..(l + 1) * 4 * btc);
            let fch_gelu = match self.recompute {
                Recompute::None => a.fch_gelu.slice(l * 4 * btc..(l + 1) * 4 * btc),
                Recompute::Gelu => {
                    // fch_gelu = gelu(fch), as the forward computed it (the fused forward in its
                    // product's epilogue), into the one layer's buffer
                    let mut out = a.fch_gelu.slice_mut(..4 * btc);
                    prof.run(Family::Gelu, Cost::gelu_forward(4 * btc), || {
                        gpu.gelu_forward(&mut out, &fch)
                    })?;
                    a.fch_gelu.slice(..4 * btc)
                }
            };
            let mut dfcprojw = g.fcprojw.slice_mut(l * c * c4..(l + 1) * c * c4);
            let mut dfcprojb = g.fcprojb.slice_mut(l * c1..(l + 1) * c1);
            if fused {
                // dfch = (dres . fcprojw) * gelu'(fch), in the product's epilogue
                prof.run(Family::Matmul, Cost::matmul_backward(b, t, c4, c), || {
                    gpu.matmul_backward_dgelu_lt(
                        &mut d.fch,
                        &mut dfcprojw,
                        Some(&mut dfcprojb),
                        &dres.as_view(),
                        &fch_gelu,
                        &w.fcprojw,
                        &fch,
                        b,
                        t,
                        c4,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Matmul, Cost::matmul_backward(b, t, c4, c), || {
                    matmul_backward_on(
                        gpu,
                        fused,
                        &mut d.fch_gelu,
                        &mut dfcprojw,
                        Some(&mut dfcprojb),
                        &dres.as_view(),
                        &fch_gelu,
                        &w.fcprojw,
                        b,
                        t,
                        c4,
                        c,
                    )
                })?;
                gpu.memset_zero(&mut d.fch)?;
                prof.run(Family::Gelu, Cost::gelu_backward(4 * btc), || {
                    gpu.gelu_backward(&mut d.fch, &fch, &d.fch_gelu.as_view())
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c4), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.ln2,
                    &mut g.fcw.slice_mut(l * c4 * c..(l + 1) * c4 * c),
                    Some(&mut g.fcb.slice_mut(l * c4..(l + 1) * c4)),
                    &d.fch.as_view(),
                    &a.ln2.slice(l * btc..(l + 1) * btc),
                    &w.fcw,
                    b,
                    t,
                    c,
                    c4,
                )
            })?;
            // dres += ln2's input gradient: now the gradient of residual2 = residual + attproj
            prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
                gpu.layernorm_backward(
                    &mut dres,
                    &mut g.ln2w.slice_mut(l * c1..(l + 1) * c1),
                    &mut g.ln2b.slice_mut(l * c1..(l + 1) * c1),
                    &d.ln2.as_view(),
                    &a.residual2.slice(l * btc..(l + 1) * btc),
                    &w.ln2w,
                    &s.ln2_mean.slice(l * bt..(l + 1) * bt),
                    &s.ln2_rstd.slice(l * bt..(l + 1) * bt),
                    b,
                    t,
                    c,
                )
            })?;
            let atty = a.atty.slice(l * btc..(l + 1) * btc);
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.atty,
                    &mut g.attprojw.slice_mut(l * c * c..(l + 1) * c * c),
                    Some(&mut g.attprojb.slice_mut(l * c1..(l + 1) * c1)),
                    &dres.as_view(),
                    &atty,
                    &w.attprojw,
                    b,
                    t,
                    c,
                    c,
                )
            })?;
            let qkv = a.qkv.slice(l * 3 * btc..(l + 1) * 3 * btc);
            prof.run(Family::Attention, Cost::attention_backward(b, t, c), || {
                if fused {
                    let lse = self.lse.slice(l * bnht..(l + 1) * bnht);
                    gpu.flash_attention_backward(
                        &mut d.qkv,
                        &d.atty.as_view(),
                        &qkv,
                        &atty,
                        &lse,
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch32,
                    )
                } else {
                    gpu.attention_backward(
                        &mut d.qkv,
                        &mut d.preatt,
                        &mut d.att,
                        &d.atty.as_view(),
                        &qkv,
                        &a.att.slice(l * att_n..(l + 1) * att_n),
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch,
                    )
                }
            })?;
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c3), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.ln1,
                    &mut g.qkvw.slice_mut(l * c3 * c..(l + 1) * c3 * c),
                    Some(&mut g.qkvb.slice_mut(l * c3..(l + 1) * c3)),
                    &d.qkv.as_view(),
                    &a.ln1.slice(l * btc..(l + 1) * btc),
                    &w.qkvw,
                    b,
                    t,
                    c,
                    c3,
                )
            })?;
            // dres += ln1's input gradient: now the gradient of the layer's input
            prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
                gpu.layernorm_backward(
                    &mut dres,
                    &mut g.ln1w.slice_mut(l * c1..(l + 1) * c1),
                    &mut g.ln1b.slice_mut(l * c1..(l + 1) * c1),
                    &d.ln1.as_view(),
                    &residual,
                    &w.ln1w,
                    &s.ln1_mean.slice(l * bt..(l + 1) * bt),
                    &s.ln1_rstd.slice(l * bt..(l + 1) * bt),
                    b,
                    t,
                    c,
                )
            })?;
        }
        // dres now holds the gradient of the encoding
        prof.run(Family::Encoder, Cost::encoder_backward(b, t, c), || {
            // SAFETY: the forward uploaded token_buckets of its inputs, which check_forward found
            // to be below V <= Vp, the rows of dwte.
            unsafe {
                gpu.encoder_backward_buckets(
                    &mut g.wte,
                    &mut g.wpe,
                    &dres.as_view(),
                    &buckets,
                    b,
                    t,
                    c,
                )
            }
        })?;
        Ok(())
    }
}
