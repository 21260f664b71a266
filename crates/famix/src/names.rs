//! Settings that are one of a few named choices (precision, freeze policy, dataset
//! layout, ...): each variant has one lower-case name, the one configuration files,
//! checkpoints and the command line use, so every front end (the `famix` command, the
//! Python module) offers and parses exactly the same words.

/// An enum whose variants have one name each.
pub trait Named: Sized + Copy + 'static {
    /// Every variant, in the order help texts list them.
    const ALL: &'static [Self];
    /// The variant's name.
    fn name(self) -> &'static str;
    /// The variant called `s`, if any.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == s)
    }
    /// All names, comma-separated (for messages).
    fn names() -> String {
        Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
    }
}

/// Implements [`Named`] for an enum with an inherent `name()`.
macro_rules! named {
    ($t:ty, [$($v:expr),* $(,)?]) => {
        impl $crate::names::Named for $t {
            const ALL: &'static [Self] = &[$($v),*];
            fn name(self) -> &'static str {
                <$t>::name(self)
            }
        }
    };
}
pub(crate) use named;
