//! Splitting a job over a cluster: shard `I/N` of a list takes the items whose index
//! is `I` modulo `N`, so shards are disjoint, cover the list, are balanced to within
//! one item, and do not depend on anything but the list's (sorted, deterministic)
//! order. `auto` reads the shard from the scheduler: Slurm array jobs
//! (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`)
//! or Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, with the count given as
//! `--shards N` since Kubernetes does not export it).

use std::fmt;

use crate::error::{Error, Result};

/// One part of a job split `count` ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// This part, `0..count`.
    pub index: usize,
    /// Parts in all.
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn bad(problem: String) -> Error {
    Error::invalid_setting("shard", problem)
}

impl Shard {
    /// Parses `I/N` (0 ≤ I < N).
    pub fn parse(s: &str) -> Result<Shard> {
        let (i, n) = s.split_once('/').ok_or_else(|| bad(format!("{s:?} is not I/N (e.g. 0/4) or auto")))?;
        let index: usize = i.trim().parse().map_err(|_| bad(format!("{i:?} in {s:?} is not a shard index")))?;
        let count: usize = n.trim().parse().map_err(|_| bad(format!("{n:?} in {s:?} is not a shard count")))?;
        if count == 0 || index >= count {
            return Err(bad(format!("{s:?}: the index must be in 0..{count} and the count at least 1")));
        }
        Ok(Shard { index, count })
    }

    /// The shard of this task from the scheduler's environment (`env` looks a
    /// variable up); `shards` is `--shards N` (needed for Kubernetes).
    pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>, shards: Option<usize>) -> Result<Shard> {
        let num = |k: &str| -> Result<Option<usize>> {
            env(k).map(|v| v.trim().parse::<usize>().map_err(|_| bad(format!("{k}={v:?} is not a number")))).transpose()
        };
        let (index, count) = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = shards
                .or(num("SLURM_ARRAY_TASK_COUNT")?)
                .ok_or_else(|| bad("SLURM_ARRAY_TASK_COUNT is not set; give `shards` N".into()))?;
            (id.checked_sub(min).ok_or_else(|| bad(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")))?, count)
        } else if let Some(id) = num("JOB_COMPLETION_INDEX")? {
            (
                id,
                shards.ok_or_else(|| {
                    bad("JOB_COMPLETION_INDEX is set but the shard count is not: give `shards` N (the Job's completions)".into())
                })?,
            )
        } else {
            return Err(bad(
                "auto: neither SLURM_ARRAY_TASK_ID (Slurm array job) nor JOB_COMPLETION_INDEX (Kubernetes Indexed Job) is set".into(),
            ));
        };
        Shard::parse(&format!("{index}/{count}"))
    }

    /// `--shard` as given (`I/N` or `auto`) with `--shards`; None without `--shard`.
    pub fn from_flags(shard: Option<&str>, shards: Option<usize>) -> Result<Option<Shard>> {
        match shard {
            None if shards.is_some() => Err(Error::invalid_setting("shards", "needs `shard` auto")),
            None => Ok(None),
            Some("auto") => Shard::from_env(&|k| std::env::var(k).ok(), shards).map(Some),
            Some(s) if shards.is_some() => Err(bad(format!("`shards` goes with `shard` auto, not {s:?}"))),
            Some(s) => Shard::parse(s).map(Some),
        }
    }

    /// Whether item `i` of the list belongs to this shard.
    pub(crate) fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// The indices of a list of `n` items that belong to this shard, in order.
    pub fn select(&self, n: usize) -> Vec<usize> {
        (self.index..n).step_by(self.count).collect()
    }
}

/// Checks that `parts` are the shards 0..N of one N-way split, each exactly once.
pub fn check_complete(parts: &[Shard]) -> Result<()> {
    let Some(n) = parts.first().map(|s| s.count) else { return Err(bad("no parts to merge".into())) };
    let mut seen = vec![false; n];
    for s in parts {
        if s.count != n {
            return Err(bad(format!("parts of different splits: {s} and a /{n}")));
        }
        if std::mem::replace(&mut seen[s.index], true) {
            return Err(bad(format!("shard {s} is given twice")));
        }
    }
    let missing: Vec<String> = seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        return Err(bad(format!("missing shard(s) {}", missing.join(", "))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shards_partition_a_list() {
        let n = 11;
        let mut all: Vec<usize> = (0..3).flat_map(|i| Shard { index: i, count: 3 }.select(n)).collect();
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        assert_eq!(Shard::parse("1/4").unwrap().select(10), vec![1, 5, 9]);
        for bad in ["4/4", "x/2", "1", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scheduler_environments() {
        let env = |vars: &[(&str, &str)]| {
            let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |k: &str| m.get(k).cloned()
        };
        // Slurm `--array=1-4`: ids 1..4, min 1.
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(Shard::from_env(&slurm, None).unwrap(), Shard { index: 2, count: 4 });
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(Shard::from_env(&k8s, Some(4)).unwrap(), Shard { index: 0, count: 4 });
        assert!(Shard::from_env(&k8s, None).unwrap_err().to_string().contains("`shards`"));
        assert!(Shard::from_env(&env(&[]), Some(2)).is_err());
        assert!(check_complete(&[Shard { index: 1, count: 2 }, Shard { index: 0, count: 2 }]).is_ok());
        assert!(check_complete(&[Shard { index: 1, count: 2 }]).unwrap_err().to_string().contains("missing shard(s) 0/2"));
        assert!(check_complete(&[Shard { index: 1, count: 2 }, Shard { index: 1, count: 2 }]).is_err());
    }
}
