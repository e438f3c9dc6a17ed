//! Numbers in messages, as a person reads them: a count with its noun in the right number ("1
//! batch", "2 batches").

use std::fmt::Display;

/// `n` with its noun: `one` when `n` is 1, `many` otherwise ("1 batch", "0 batches", "9159
/// batches").
pub fn count<N: Display + PartialEq + From<u8>>(n: N, one: &str, many: &str) -> String {
    let noun = if n == N::from(1) { one } else { many };
    format!("{n} {noun}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_takes_the_noun_of_its_number() {
        assert_eq!(count(1usize, "batch", "batches"), "1 batch");
        assert_eq!(count(0usize, "batch", "batches"), "0 batches");
        assert_eq!(count(2u64, "token", "tokens"), "2 tokens");
        assert_eq!(count(9159usize, "batch", "batches"), "9159 batches");
        assert_eq!(count(1u64, "micro-batch", "micro-batches"), "1 micro-batch");
    }
}
