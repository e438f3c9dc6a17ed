//! The error of a model that does not fit in memory (either engine), and what would help: the
//! engine knows the sizes, the command that asked for it knows its flags. An engine returns
//! [`OutOfMemory`] (as an `anyhow` error, or the context of the allocation's own error); a command
//! other than training names its flags with [`for_command`], which finds it in the chain.

use crate::host_memory::size_text;

/// Whose flags the advice names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Knobs {
    /// Training: -b, -t, a smaller model, and the flags that trade work for memory.
    #[default]
    Train,
    /// `eval` on token shards: --batch and --seq.
    Eval,
    /// `eval --hellaswag`: --batch (T is the longest example's).
    Hellaswag,
    /// `sample`: --window (B is 1).
    Sample,
    /// `verify`: the debug state sets B and T; --recompute.
    Verify,
}

/// A flag that trades work for memory, and what it would save.
#[derive(Clone, Debug, PartialEq)]
pub struct Saving {
    /// The flag's name, to tell whether the command has it ("--recompute").
    pub flag: &'static str,
    /// What to say, e.g. "GELU recomputed (--recompute gelu: 96.0 MiB less)".
    pub text: String,
    /// The bytes it saves.
    pub bytes: f64,
}

/// A model that does not fit: what it needs, what the device has, what would help.
#[derive(Clone, Debug, PartialEq)]
pub struct OutOfMemory {
    /// "not enough GPU memory: the model (...) needs ... (parts), the GPU has ... free of ...".
    pub what: String,
    /// Everything the model needs, in bytes.
    pub need: f64,
    /// What no batch shape changes (the parameters, and for training their gradients, AdamW
    /// state and master weights), when that alone does not fit: a smaller batch cannot help.
    pub fixed_alone: Option<f64>,
    /// The flags that trade work for memory, and what each would save.
    pub savings: Vec<Saving>,
    /// Whose flags to name (training's unless a command says otherwise).
    pub knobs: Knobs,
}

impl OutOfMemory {
    /// A batch whose sizes overflow (`what` says which): no memory holds it, and the advice is a
    /// smaller batch in the command's flags.
    pub fn beyond_any_memory(what: String) -> OutOfMemory {
        OutOfMemory {
            what,
            need: f64::INFINITY,
            fixed_alone: None,
            savings: Vec::new(),
            knobs: Knobs::default(),
        }
    }

    /// What would help, for the command's flags.
    pub fn advice(&self) -> String {
        if let Some(fixed) = self.fixed_alone {
            return format!(
                "the parameters{} alone take {}, whatever the batch: use a smaller model",
                match self.knobs {
                    Knobs::Train => " and their gradients and AdamW state",
                    _ => "",
                },
                size_text(fixed)
            );
        }
        let base = match self.knobs {
            Knobs::Train => "use a smaller batch (-b) or sequence length (-t), or a smaller model",
            Knobs::Eval => "use a smaller --batch or --seq",
            Knobs::Hellaswag => "use a smaller --batch (a multiple of 4)",
            Knobs::Sample => "use a smaller --window",
            Knobs::Verify => "the debug state sets B and T: use a device with more memory",
        };
        // (a flag that saves under 1% of the need cannot make the difference worth its work)
        let has = |flag: &str| match self.knobs {
            Knobs::Train => true,
            Knobs::Verify => flag == "--recompute",
            _ => false,
        };
        let helps: Vec<&str> = self
            .savings
            .iter()
            .filter(|s| has(s.flag) && s.bytes >= 0.01 * self.need)
            .map(|s| s.text.as_str())
            .collect();
        match helps.as_slice() {
            [] => base.to_string(),
            _ => format!("{base}, or {}", helps.join(", or ")),
        }
    }
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.what, self.advice())
    }
}

impl std::error::Error for OutOfMemory {}

/// `e` with the advice of an [`OutOfMemory`] in it (itself, or a context of it) for `knobs`'
/// flags; any other error as it is.
pub fn for_command(mut e: anyhow::Error, knobs: Knobs) -> anyhow::Error {
    if let Some(oom) = e.downcast_mut::<OutOfMemory>() {
        oom.knobs = knobs;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(fixed_alone: Option<f64>) -> OutOfMemory {
        OutOfMemory {
            what: "not enough GPU memory: the model needs 2.00 GiB".into(),
            need: 2048.0 * 1048576.0,
            fixed_alone: fixed_alone.map(|m| m * 1048576.0),
            savings: vec![
                Saving {
                    flag: "--classifier-chunk",
                    text: "chunks".into(),
                    bytes: 400.0 * 1048576.0,
                },
                Saving {
                    flag: "--recompute",
                    text: "recompute".into(),
                    bytes: 10.0 * 1048576.0,
                },
            ],
            knobs: Knobs::Train,
        }
    }

    #[test]
    fn each_command_is_told_its_own_flags() {
        let mut e = oom(None);
        // 10 MiB of 2 GiB is under 1%: not worth naming
        assert_eq!(
            e.advice(),
            "use a smaller batch (-b) or sequence length (-t), or a smaller model, or chunks"
        );
        // 1% exactly is named, a byte less is not (the need is 2^31 bytes, so 0.01 * need is the
        // f64 nearest 21474836.48, as the literal is)
        e.savings[1].bytes = 21_474_836.48;
        assert!(
            e.advice().ends_with("or chunks, or recompute"),
            "{}",
            e.advice()
        );
        e.savings[1].bytes = 21_474_835.48;
        assert!(e.advice().ends_with("or chunks"), "{}", e.advice());
        e.savings[1].bytes = 100.0 * 1048576.0;
        assert_eq!(
            e.advice(),
            "use a smaller batch (-b) or sequence length (-t), or a smaller model, or chunks, or \
             recompute"
        );
        e.knobs = Knobs::Verify;
        assert_eq!(
            e.advice(),
            "the debug state sets B and T: use a device with more memory, or recompute"
        );
        e.knobs = Knobs::Eval;
        assert_eq!(e.advice(), "use a smaller --batch or --seq");
        e.knobs = Knobs::Sample;
        assert_eq!(e.advice(), "use a smaller --window");
        // a batch beyond any memory: the command's own batch flags
        let mut huge = OutOfMemory::beyond_any_memory("B=2^60 overflows".into());
        assert_eq!(
            huge.to_string(),
            "B=2^60 overflows; use a smaller batch (-b) or sequence length (-t), or a smaller model"
        );
        huge.knobs = Knobs::Hellaswag;
        assert_eq!(
            huge.to_string(),
            "B=2^60 overflows; use a smaller --batch (a multiple of 4)"
        );
        assert_eq!(
            e.to_string(),
            "not enough GPU memory: the model needs 2.00 GiB; use a smaller --window"
        );
    }

    #[test]
    fn parameters_that_alone_do_not_fit_ask_for_a_smaller_model() {
        let mut e = oom(Some(512.0));
        assert_eq!(
            e.advice(),
            "the parameters and their gradients and AdamW state alone take 512.0 MiB, whatever \
             the batch: use a smaller model"
        );
        e.knobs = Knobs::Sample;
        assert_eq!(
            e.advice(),
            "the parameters alone take 512.0 MiB, whatever the batch: use a smaller model"
        );
    }

    #[test]
    fn a_command_finds_the_error_under_a_context() {
        let e = anyhow::Error::new(std::io::Error::other("CUDA_ERROR_OUT_OF_MEMORY"))
            .context(oom(None));
        let e = for_command(e, Knobs::Eval);
        assert!(
            format!("{e:#}").contains("use a smaller --batch or --seq"),
            "{e:#}"
        );
        let plain = for_command(anyhow::anyhow!("another error"), Knobs::Eval);
        assert_eq!(plain.to_string(), "another error");
    }
}
