//! The simulated wire: one [`Link`] per connection, as both ends see it. Connection ids are never
//! reused. Each link knows which master incarnation accepted it, whether each end still has it
//! open, and when the last message each way arrives, so a delayed message never overtakes an
//! earlier one on the same connection (as on TCP) while messages on different connections do.

use crate::core::ConnId;
use protocol::FromMaster;

/// Who holds the peer end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Owner {
    Client,
    Worker(u32),
}

#[derive(Debug)]
pub struct Link {
    pub owner: Owner,
    /// The master incarnation that accepted it.
    pub master: u32,
    /// The core knows it: what arrives is handled.
    pub core_open: bool,
    /// Closed by the core's own `Close`: it must send nothing more.
    closed_by_core: bool,
    /// The turn in which the core's side closed: output drained in that same turn was queued
    /// before, and is dropped as the shell drops it.
    closed_turn: u64,
    /// The peer still reads and writes it.
    pub peer_open: bool,
    /// When the last message each way arrives.
    to_core_us: u64,
    pub to_peer_us: u64,
}

/// Why an output of the core may not reach its connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    NeverOpened,
    /// Accepted by an earlier master incarnation.
    OtherMaster(u32),
    /// Closed before this turn, or by the core's own `Close`.
    Closed,
    /// A worker's message to the client, or a client's reply to a worker.
    NotForPeer(Owner),
}

#[derive(Debug, Default)]
pub struct Net {
    links: Vec<Link>,
}

impl Net {
    /// A new connection of `owner`, accepted by master incarnation `master`.
    pub fn open(&mut self, owner: Owner, master: u32) -> ConnId {
        let conn = ConnId(self.links.len());
        self.links.push(Link {
            owner,
            master,
            core_open: true,
            closed_by_core: false,
            closed_turn: 0,
            peer_open: true,
            to_core_us: 0,
            to_peer_us: 0,
        });
        conn
    }

    /// A connection this table opened.
    pub fn link(&self, conn: ConnId) -> &Link {
        &self.links[conn.0]
    }

    pub fn link_mut(&mut self, conn: ConnId) -> &mut Link {
        &mut self.links[conn.0]
    }

    /// When a message sent at `now_us` with a drawn delay arrives: never before the one sent
    /// before it in the same direction.
    pub fn arrival_us(&mut self, conn: ConnId, to_core: bool, now_us: u64, delay_us: u64) -> u64 {
        let link = &mut self.links[conn.0];
        let last = if to_core {
            &mut link.to_core_us
        } else {
            &mut link.to_peer_us
        };
        *last = (now_us + delay_us).max(*last);
        *last
    }

    /// The core's side closes in `turn`: the core forgot it (`by_core`: its own `Close`), the
    /// peer went away, or the master died.
    pub fn close_core_side(&mut self, conn: ConnId, by_core: bool, turn: u64) {
        let link = &mut self.links[conn.0];
        link.core_open = false;
        link.closed_by_core = by_core;
        link.closed_turn = turn;
    }

    /// Connections the core still has.
    pub fn core_open(&self) -> Vec<ConnId> {
        (0..self.links.len())
            .filter(|&i| self.links[i].core_open)
            .map(ConnId)
            .collect()
    }

    /// Whether an output of master `master` drained in `turn` (a `Send` of `msg`, or a `Close`)
    /// goes out on `conn`: `Ok(false)` for a connection whose peer left in this same turn, when
    /// the output was queued before and the shell drops it.
    pub fn check_output(
        &self,
        conn: ConnId,
        msg: Option<&FromMaster>,
        master: u32,
        turn: u64,
    ) -> Result<bool, Refused> {
        let Some(link) = self.links.get(conn.0) else {
            return Err(Refused::NeverOpened);
        };
        if link.master != master {
            return Err(Refused::OtherMaster(link.master));
        }
        if !link.core_open {
            if link.closed_by_core || link.closed_turn != turn {
                return Err(Refused::Closed);
            }
            return Ok(false);
        }
        let Some(msg) = msg else { return Ok(true) };
        let wrong = match link.owner {
            Owner::Worker(_) => for_clients(msg),
            Owner::Client => for_workers(msg),
        };
        if wrong {
            return Err(Refused::NotForPeer(link.owner));
        }
        Ok(true)
    }
}

fn for_workers(msg: &FromMaster) -> bool {
    matches!(
        msg,
        FromMaster::Assign(_)
            | FromMaster::Cancel(_)
            | FromMaster::Retract(_)
            | FromMaster::Welcome {
                worker_id: Some(_),
                ..
            }
    )
}

fn for_clients(msg: &FromMaster) -> bool {
    matches!(
        msg,
        FromMaster::Submitted { .. }
            | FromMaster::Status { .. }
            | FromMaster::Results { .. }
            | FromMaster::Progress { .. }
            | FromMaster::WaitDone { .. }
            | FromMaster::CancelDone { .. }
            | FromMaster::Welcome {
                worker_id: None,
                ..
            }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskId;

    #[test]
    fn outputs_go_only_to_open_connections_of_this_master_and_their_peer() {
        let mut net = Net::default();
        let client = net.open(Owner::Client, 0);
        let worker = net.open(Owner::Worker(0), 0);
        let ids = FromMaster::Submitted {
            first: TaskId(1),
            count: 1,
            job: protocol::JobId(1),
            warnings: Vec::new(),
        };
        assert_eq!(net.check_output(client, Some(&ids), 0, 0), Ok(true));
        assert_eq!(
            net.check_output(worker, Some(&ids), 0, 0),
            Err(Refused::NotForPeer(Owner::Worker(0)))
        );
        assert_eq!(
            net.check_output(client, Some(&FromMaster::Assign(Vec::new())), 0, 0),
            Err(Refused::NotForPeer(Owner::Client))
        );
        assert_eq!(
            net.check_output(ConnId(9), None, 0, 0),
            Err(Refused::NeverOpened)
        );
        assert_eq!(
            net.check_output(client, None, 1, 0),
            Err(Refused::OtherMaster(0))
        );
        net.close_core_side(worker, false, 3);
        assert_eq!(
            net.check_output(worker, None, 0, 3),
            Ok(false),
            "queued before"
        );
        assert_eq!(net.check_output(worker, None, 0, 4), Err(Refused::Closed));
        net.close_core_side(client, true, 3);
        assert_eq!(net.check_output(client, None, 0, 3), Err(Refused::Closed));
        assert_eq!(net.core_open(), Vec::<ConnId>::new());
    }

    #[test]
    fn a_connection_keeps_its_order_each_way() {
        let mut net = Net::default();
        let c = net.open(Owner::Worker(1), 0);
        assert_eq!(net.arrival_us(c, true, 100, 500), 600);
        assert_eq!(
            net.arrival_us(c, true, 200, 10),
            600,
            "not before the earlier one"
        );
        assert_eq!(
            net.arrival_us(c, false, 200, 10),
            210,
            "the other way is independent"
        );
    }
}
