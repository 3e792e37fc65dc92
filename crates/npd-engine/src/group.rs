//! The servers of one role: requests spread over them, and a member that
//! stops answering is left out while the others go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use npd_core::{Error, Result};

use crate::vllm::Vllm;

/// One role's servers (the student's, or the teacher's). Clones share
/// which members are lost.
#[derive(Debug, Clone)]
pub struct ServerGroup {
    role: String,
    members: Vec<Vllm>,
    lost: Arc<Vec<AtomicBool>>,
}

impl ServerGroup {
    /// The servers of `role` (`student`, `teacher`), at least one.
    pub fn new(role: &str, members: Vec<Vllm>) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::invalid(
                format!("{role} servers"),
                "none given: at least one is needed",
            ));
        }
        let lost = Arc::new(members.iter().map(|_| AtomicBool::new(false)).collect());
        Ok(Self {
            role: role.into(),
            members,
            lost,
        })
    }

    /// Every member, lost ones included, in the order given.
    pub fn members(&self) -> &[Vllm] {
        &self.members
    }

    /// The first member (for messages and single-server checks).
    pub fn first(&self) -> &Vllm {
        &self.members[0]
    }

    /// Whether member `i` still answers.
    pub fn is_live(&self, i: usize) -> bool {
        !self.lost[i].load(Ordering::SeqCst)
    }

    /// Members that still answer.
    pub fn live(&self) -> usize {
        (0..self.members.len()).filter(|&i| self.is_live(i)).count()
    }

    /// Leaves member `i` out from now on, saying why.
    pub fn lose(&self, i: usize, why: &Error) {
        if !self.lost[i].swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "{} server {} stopped answering ({why}); going on with {} of {}",
                self.role,
                self.members[i].client().base(),
                self.live(),
                self.members.len()
            );
        }
    }

    /// Runs `f` on a live member, starting with member `key % n`: a member
    /// that fails in transport or answers a server error (after its
    /// client's retries) is lost and the next live one is tried. When every
    /// member is lost, the last failure is the error; any other error is
    /// returned as is.
    pub fn call<R>(&self, key: u64, f: impl Fn(&Vllm) -> Result<R>) -> Result<R> {
        let n = self.members.len();
        let mut last = None;
        for k in 0..n {
            let i = (key as usize).wrapping_add(k) % n;
            if !self.is_live(i) {
                continue;
            }
            match f(&self.members[i]) {
                Err(e @ Error::Backend { .. }) => {
                    self.lose(i, &e);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Backend {
            context: format!("{} servers", self.role),
            cause: format!("all {n} stopped answering earlier in the run").into(),
        }))
    }
}

impl From<Vllm> for ServerGroup {
    fn from(server: Vllm) -> Self {
        Self::new("the", vec![server]).expect("one member")
    }
}
