//! The read preamble every query of the public services shares.
//!
//! A query names how fresh its answer must be (`consistency`: linearizable
//! unless it asks for stale). [`Api::read`] parses that, passes the node's
//! read barrier ([`Node::read_barrier`]: ReadIndex through the leader for a
//! linearizable read, nothing for a stale one), and then runs the query on
//! this node's applied state under its read lock and converts the answer.
//! The lock is taken after the barrier and released before the answer is
//! sent, so no query holds it across an await.
//!
//! IMPLEMENTATION CAVEATS: the read lock is held while the query converts
//! its answer to protobuf; queries are bounded by their page sizes.
//!
//! [`Node::read_barrier`]: crate::node::Node::read_barrier

use tonic::Status;

use super::{to_status, Api};
use crate::node::Consistency;
use crate::proto as pb;
use crate::scheduler::state::DEFAULT_PAGE_SIZE;
use crate::scheduler::State;

/// The consistency a query asks for (its protobuf enum value).
pub fn consistency(value: i32) -> Result<Consistency, Status> {
    match pb::ReadConsistency::try_from(value) {
        Ok(pb::ReadConsistency::Stale) => Ok(Consistency::Stale),
        Ok(_) => Ok(Consistency::Linearizable),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency: unknown value {value}"
        ))),
    }
}

/// The page size a list query asks for, or the default when it names none.
pub fn page_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n as usize,
    }
}

impl Api {
    /// Runs `query` on this node's applied state once a read at
    /// `consistency` (a `ReadConsistency` value) may be served here.
    pub(super) async fn read<T>(
        &self,
        consistency: i32,
        query: impl FnOnce(&State) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let consistency = self::consistency(consistency)?;
        self.node.read_barrier(consistency).await.map_err(to_status)?;
        let state = self.node.state.read();
        query(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_linearizable_unless_they_ask_for_stale() {
        let parsed = |v: pb::ReadConsistency| consistency(v as i32).unwrap();
        assert_eq!(
            parsed(pb::ReadConsistency::Unspecified),
            Consistency::Linearizable
        );
        assert_eq!(
            parsed(pb::ReadConsistency::Linearizable),
            Consistency::Linearizable
        );
        assert_eq!(parsed(pb::ReadConsistency::Stale), Consistency::Stale);
        let unknown = consistency(7).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        assert_eq!(unknown.message(), "consistency: unknown value 7");
    }

    #[test]
    fn a_page_size_of_zero_means_the_default() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(3), 3);
    }
}
