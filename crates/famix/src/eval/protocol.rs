//! Class protocols: which classes a reported mIoU averages over. Models trained on
//! GTA5 or Cityscapes are scored on the 19 Cityscapes classes; DG papers that train on
//! Synthia report 16 classes (without terrain, truck and train, which Synthia does not
//! label) and 13 (the 16 without wall, fence and pole). The subsets are sets of
//! Cityscapes train ids, so they only apply to 19-class models.

use crate::error::{Error, Result};
use crate::eval::metrics::{subset_miou, Metrics, SYNTHIA_13, SYNTHIA_16};

/// A class protocol (`famix eval --protocol 19|16|13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassProtocol {
    /// All 19 Cityscapes classes (the model's own classes).
    All,
    /// Synthia's 16 classes.
    Synthia16,
    /// Synthia's 13 classes.
    Synthia13,
}

impl ClassProtocol {
    /// The protocol of `n` classes (19, 16 or 13).
    pub fn from_count(n: usize) -> Option<Self> {
        match n {
            19 => Some(ClassProtocol::All),
            16 => Some(ClassProtocol::Synthia16),
            13 => Some(ClassProtocol::Synthia13),
            _ => None,
        }
    }

    /// The protocol a report key names (`miou`, `miou16`, `miou13`).
    pub fn from_key(key: &str) -> Option<Self> {
        [ClassProtocol::All, ClassProtocol::Synthia16, ClassProtocol::Synthia13].into_iter().find(|p| p.key() == key)
    }

    /// The key its mIoU is reported under.
    pub fn key(self) -> &'static str {
        match self {
            ClassProtocol::All => "miou",
            ClassProtocol::Synthia16 => "miou16",
            ClassProtocol::Synthia13 => "miou13",
        }
    }

    /// The Cityscapes train ids it averages over (None: all of the model's classes).
    pub fn classes(self) -> Option<&'static [usize]> {
        match self {
            ClassProtocol::All => None,
            ClassProtocol::Synthia16 => Some(&SYNTHIA_16),
            ClassProtocol::Synthia13 => Some(&SYNTHIA_13),
        }
    }

    /// Refuses a subset protocol for a model (or merged evaluation, named by `whose`)
    /// whose classes (`names`) are not the 19 Cityscapes classes, before any work.
    pub fn check(self, names: &[String], whose: &str) -> Result<()> {
        let k = names.len();
        match self.classes() {
            Some(c) if names != crate::data::labels::CITYSCAPES_CLASSES => Err(Error::invalid_setting(
                "protocol",
                format!(
                    "{} is a protocol on the 19 Cityscapes classes; {whose} has {k}{}",
                    c.len(),
                    if k == 19 { " other classes" } else { "" }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The protocol's mIoU of a k × k row-major confusion matrix (None when none of
    /// its classes has a pixel in ground truth or prediction).
    pub fn miou(self, confusion: &[u64], k: usize) -> Option<f64> {
        match self.classes() {
            Some(c) => subset_miou(confusion, k, c),
            None => Some(Metrics::from_matrix(confusion, k).miou).filter(|v| v.is_finite()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_protocols_need_the_cityscapes_classes_not_just_nineteen() {
        let cityscapes = crate::data::classes::ClassSet::cityscapes().names();
        assert!(ClassProtocol::Synthia16.check(&cityscapes, "m").is_ok());
        let mut other = cityscapes.clone();
        other[3] = "hedge".into();
        let e = ClassProtocol::Synthia16.check(&other, "m").unwrap_err().to_string();
        assert!(e.contains("m has 19 other classes"), "{e}");
        assert!(ClassProtocol::Synthia13.check(&cityscapes[..5], "m").unwrap_err().to_string().contains("m has 5"));
        assert!(ClassProtocol::All.check(&other, "m").is_ok());
    }
}
