//! The activation layout: every tensor the forward pass saves for the backward pass, in one
//! allocation with named slices, sized from the config and the batch shape (B, T). The gradients of
//! the activations use the same layout. Both engines use it, so a buffer has one name everywhere.

use crate::config::GPT2Config;

/// One value per activation tensor, by name; `Acts<&mut [f32]>` is a set of named slices.
#[derive(Debug)]
pub struct Acts<S> {
    pub encoded: S,   // (B, T, C)
    pub ln1: S,       // (L, B, T, C)
    pub ln1_mean: S,  // (L, B, T)
    pub ln1_rstd: S,  // (L, B, T)
    pub qkv: S,       // (L, B, T, 3*C)
    pub atty: S,      // (L, B, T, C)
    pub preatt: S,    // (L, B, NH, T, T)
    pub att: S,       // (L, B, NH, T, T)
    pub attproj: S,   // (L, B, T, C)
    pub residual2: S, // (L, B, T, C)
    pub ln2: S,       // (L, B, T, C)
    pub ln2_mean: S,  // (L, B, T)
    pub ln2_rstd: S,  // (L, B, T)
    pub fch: S,       // (L, B, T, 4*C)
    pub fch_gelu: S,  // (L, B, T, 4*C)
    pub fcproj: S,    // (L, B, T, C)
    pub residual3: S, // (L, B, T, C)
    pub lnf: S,       // (B, T, C)
    pub lnf_mean: S,  // (B, T)
    pub lnf_rstd: S,  // (B, T)
    pub logits: S,    // (B, T, Vp)
    pub probs: S,     // (B, T, Vp)
    pub losses: S,    // (B, T)
}

/// The number of activation tensors.
pub const NUM_ACTIVATION_TENSORS: usize = 23;

impl<S> Acts<S> {
    pub fn from_array(a: [S; NUM_ACTIVATION_TENSORS]) -> Self {
        let [encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, attproj, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, residual3, lnf, lnf_mean, lnf_rstd, logits, probs, losses] =
            a;
        Acts {
            encoded,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            preatt,
            att,
            attproj,
            residual2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            fcproj,
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            probs,
            losses,
        }
    }
}

/// The number of elements of each activation tensor for a batch of B x T.
pub fn act_sizes(cfg: &GPT2Config, b: usize, t: usize) -> Acts<usize> {
    let (l, nh, c, vp) = (
        cfg.num_layers,
        cfg.num_heads,
        cfg.channels,
        cfg.padded_vocab_size,
    );
    let bt = b * t;
    Acts {
        encoded: bt * c,
        ln1: l * bt * c,
        ln1_mean: l * bt,
        ln1_rstd: l * bt,
        qkv: l * bt * 3 * c,
        atty: l * bt * c,
        preatt: l * b * nh * t * t,
        att: l * b * nh * t * t,
        attproj: l * bt * c,
        residual2: l * bt * c,
        ln2: l * bt * c,
        ln2_mean: l * bt,
        ln2_rstd: l * bt,
        fch: l * bt * 4 * c,
        fch_gelu: l * bt * 4 * c,
        fcproj: l * bt * c,
        residual3: l * bt * c,
        lnf: bt * c,
        lnf_mean: bt,
        lnf_rstd: bt,
        logits: bt * vp,
        probs: bt * vp,
        losses: bt,
    }
}

fn sizes_array(s: Acts<usize>) -> [usize; NUM_ACTIVATION_TENSORS] {
    [
        s.encoded,
        s.ln1,
        s.ln1_mean,
        s.ln1_rstd,
        s.qkv,
        s.atty,
        s.preatt,
        s.att,
        s.attproj,
        s.residual2,
        s.ln2,
        s.ln2_mean,
        s.ln2_rstd,
        s.fch,
        s.fch_gelu,
        s.fcproj,
        s.residual3,
        s.lnf,
        s.lnf_mean,
        s.lnf_rstd,
        s.logits,
        s.probs,
        s.losses,
    ]
}

/// The total number of activation elements for a batch of B x T.
pub fn num_activations(cfg: &GPT2Config, b: usize, t: usize) -> usize {
    sizes_array(act_sizes(cfg, b, t)).iter().sum()
}

/// Splits the front of `buf` into the named activation tensors of a B x T batch. `buf` may be
/// larger (sized once for the largest batch); the layout depends only on (B, T).
pub fn split_mut<'a, T>(
    cfg: &GPT2Config,
    b: usize,
    t: usize,
    mut buf: &'a mut [T],
) -> Acts<&'a mut [T]> {
    let sizes = sizes_array(act_sizes(cfg, b, t));
    assert!(
        buf.len() >= sizes.iter().sum::<usize>(),
        "activation buffer too small"
    );
    Acts::from_array(sizes.map(|n| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(n);
        buf = tail;
        head
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        let n = num_activations(&cfg, b, t);
        // Hand count: per layer BT*(C + 2 + 3C + C + C + C + C + 2 + 4C + 4C + C + C) = BT*(18C + 4),
        // plus 2*B*NH*T*T;
        // plus BT*C + BT*C + 2*BT + 2*BT*Vp + BT.
        let bt = b * t;
        let per_layer = bt * (18 * 8 + 4) + 2 * b * 2 * t * t;
        assert_eq!(n, 2 * per_layer + bt * 8 * 2 + 2 * bt + 2 * bt * 128 + bt);
        let mut buf = vec![0f32; n + 7];
        let a = split_mut(&cfg, b, t, &mut buf);
        assert_eq!(a.qkv.len(), 2 * bt * 24);
        assert_eq!(a.losses.len(), bt);
    }
}
