//! Message kinds: their wire values and which side may send each.

/// Every message kind, with its wire value. 0 is reserved as invalid.
///
/// "JSON" kinds carry a JSON object, "raw" kinds carry bytes as they are,
/// "empty" kinds carry no payload (a payload is ignored). Each variant's
/// documentation starts with the side that sends it, as
/// [`MessageKind::direction`] has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum MessageKind {
    /// Host -> agent, JSON [`Hello`](crate::Hello): opens a session, offers
    /// versions.
    Hello = 1,
    /// Agent -> host, JSON [`HelloAck`](crate::HelloAck): chosen version,
    /// identity, capabilities.
    HelloAck = 2,
    /// Either way, empty: liveness probe, answered by [`MessageKind::Pong`].
    Ping = 3,
    /// Either way, empty: answer to [`MessageKind::Ping`] with the same request id.
    Pong = 4,
    /// Host -> agent, JSON [`Execute`](crate::Execute): start a process.
    Execute = 5,
    /// Host -> agent, raw: bytes for the execution's stdin (flow-controlled).
    Stdin = 6,
    /// Host -> agent, empty: close the execution's stdin.
    StdinClose = 7,
    /// Agent -> host, raw: bytes the process wrote to stdout (flow-controlled).
    Stdout = 8,
    /// Agent -> host, raw: bytes the process wrote to stderr (flow-controlled).
    Stderr = 9,
    /// Agent -> host, JSON [`ExecResult`](crate::ExecResult): how the
    /// execution ended; last frame.
    ExecResult = 10,
    /// Host -> agent, JSON [`SignalRequest`](crate::SignalRequest): signal a
    /// running execution's group.
    Signal = 11,
    /// Either way, JSON [`Stop`](crate::Stop): the host cancels one execution
    /// or stops the agent; the agent acknowledges `STOP {scope: agent}` with
    /// the same frame.
    Stop = 12,
    /// Host -> agent, empty: ask for a [`MessageKind::StatusReport`].
    StatusRequest = 13,
    /// Agent -> host, JSON [`StatusReport`](crate::StatusReport).
    StatusReport = 14,
    /// Host -> agent, JSON [`FilePut`](crate::FilePut): start writing a file
    /// in the guest.
    FilePut = 15,
    /// Host -> agent, JSON [`FileGet`](crate::FileGet): start reading a file
    /// from the guest.
    FileGet = 16,
    /// Agent -> host, JSON [`FileInfo`](crate::FileInfo): size and mode of a
    /// file being read.
    FileInfo = 17,
    /// Either way, raw: a chunk of file content (flow-controlled).
    FileData = 18,
    /// Either way, JSON [`FileEnd`](crate::FileEnd): end of file content,
    /// with its checksum.
    FileEnd = 19,
    /// Agent -> host, JSON [`FileDone`](crate::FileDone): a put was written
    /// and verified.
    FileDone = 20,
    /// Either way, raw 4-byte little-endian credit increment for a request.
    WindowUpdate = 21,
    /// Either way, JSON [`ErrorReport`](crate::ErrorReport): a request (or the
    /// connection, id 0) failed.
    Error = 22,
    /// Host -> agent, JSON [`FsRequest`](crate::FsRequest): one file system
    /// operation in the guest.
    FsRequest = 23,
    /// Agent -> host, JSON [`FsResult`](crate::FsResult): how a file system
    /// operation ended; last frame.
    FsResult = 24,
    /// Host -> agent, JSON [`TreePut`](crate::TreePut): unpack the tar
    /// stream that follows as FILE_DATA into a guest directory.
    TreePut = 25,
    /// Host -> agent, JSON [`TreeGet`](crate::TreeGet): pack a guest
    /// directory as a tar stream, sent as FILE_DATA.
    TreeGet = 26,
    /// Agent -> host, JSON [`TreeDone`](crate::TreeDone): a tree put was
    /// unpacked and verified.
    TreeDone = 27,
    /// Host -> agent, JSON [`Resize`](crate::Resize): the new window size of
    /// a running execution's terminal.
    Resize = 28,
}

/// Which side of a connection may send a kind of message.
///
/// Both sides decide from this what they take. The agent answers a kind only
/// the agent sends with `ERROR unknown_kind` (ending the request it names, if
/// that is open). The host treats a kind only the host sends, arriving for
/// one of its open requests, as a protocol violation that ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Only the host sends it: requests, and what the host streams into them.
    HostToAgent,
    /// Only the agent sends it: HELLO_ACK, output, and the answers that end
    /// requests.
    AgentToHost,
    /// Either side: PING, PONG and ERROR, flow-control credit, file content
    /// (a put sends it one way, a get the other), and STOP (the agent's
    /// acknowledgement of `STOP {scope: agent}` is a STOP).
    Both,
}

impl Direction {
    /// Whether the host may send frames of this direction.
    #[must_use]
    pub fn host_may_send(self) -> bool {
        matches!(self, Self::HostToAgent | Self::Both)
    }

    /// Whether the agent may send frames of this direction.
    #[must_use]
    pub fn agent_may_send(self) -> bool {
        matches!(self, Self::AgentToHost | Self::Both)
    }
}

impl MessageKind {
    /// All kinds, in wire order.
    pub const ALL: [Self; 28] = [
        Self::Hello,
        Self::HelloAck,
        Self::Ping,
        Self::Pong,
        Self::Execute,
        Self::Stdin,
        Self::StdinClose,
        Self::Stdout,
        Self::Stderr,
        Self::ExecResult,
        Self::Signal,
        Self::Stop,
        Self::StatusRequest,
        Self::StatusReport,
        Self::FilePut,
        Self::FileGet,
        Self::FileInfo,
        Self::FileData,
        Self::FileEnd,
        Self::FileDone,
        Self::WindowUpdate,
        Self::Error,
        Self::FsRequest,
        Self::FsResult,
        Self::TreePut,
        Self::TreeGet,
        Self::TreeDone,
        Self::Resize,
    ];

    /// The kind's name as the protocol documentation writes it
    /// (`EXECUTE`, `RESULT`, `WINDOW_UPDATE`...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "HELLO",
            Self::HelloAck => "HELLO_ACK",
            Self::Ping => "PING",
            Self::Pong => "PONG",
            Self::Execute => "EXECUTE",
            Self::Stdin => "STDIN",
            Self::StdinClose => "STDIN_CLOSE",
            Self::Stdout => "STDOUT",
            Self::Stderr => "STDERR",
            Self::ExecResult => "RESULT",
            Self::Signal => "SIGNAL",
            Self::Stop => "STOP",
            Self::StatusRequest => "STATUS_REQUEST",
            Self::StatusReport => "STATUS_REPORT",
            Self::FilePut => "FILE_PUT",
            Self::FileGet => "FILE_GET",
            Self::FileInfo => "FILE_INFO",
            Self::FileData => "FILE_DATA",
            Self::FileEnd => "FILE_END",
            Self::FileDone => "FILE_DONE",
            Self::WindowUpdate => "WINDOW_UPDATE",
            Self::Error => "ERROR",
            Self::FsRequest => "FS_REQUEST",
            Self::FsResult => "FS_RESULT",
            Self::TreePut => "TREE_PUT",
            Self::TreeGet => "TREE_GET",
            Self::TreeDone => "TREE_DONE",
            Self::Resize => "RESIZE",
        }
    }

    /// Whether a frame of this kind opens a request: it takes one of the
    /// session's request slots, under a request id that is not 0 and not
    /// in use, until the request's last frame.
    #[must_use]
    pub fn opens_request(self) -> bool {
        matches!(
            self,
            Self::Execute
                | Self::FilePut
                | Self::FileGet
                | Self::StatusRequest
                | Self::FsRequest
                | Self::TreePut
                | Self::TreeGet
        )
    }

    /// Whether frames of this kind count against the flow-control window.
    #[must_use]
    pub fn is_flow_controlled(self) -> bool {
        matches!(
            self,
            Self::Stdin | Self::Stdout | Self::Stderr | Self::FileData
        )
    }

    /// Which side may send this kind: the one table both the host and the
    /// agent check what they receive against.
    #[must_use]
    pub fn direction(self) -> Direction {
        // No wildcard: a new kind must be given its direction here.
        match self {
            Self::Hello
            | Self::Execute
            | Self::Stdin
            | Self::StdinClose
            | Self::Signal
            | Self::StatusRequest
            | Self::FilePut
            | Self::FileGet
            | Self::FsRequest
            | Self::TreePut
            | Self::TreeGet
            | Self::Resize => Direction::HostToAgent,
            Self::HelloAck
            | Self::Stdout
            | Self::Stderr
            | Self::ExecResult
            | Self::StatusReport
            | Self::FileInfo
            | Self::FileDone
            | Self::FsResult
            | Self::TreeDone => Direction::AgentToHost,
            Self::Ping
            | Self::Pong
            | Self::Stop
            | Self::FileData
            | Self::FileEnd
            | Self::WindowUpdate
            | Self::Error => Direction::Both,
        }
    }
}

impl TryFrom<u16> for MessageKind {
    type Error = u16;

    fn try_from(value: u16) -> Result<Self, u16> {
        Self::ALL
            .iter()
            .copied()
            .find(|kind| *kind as u16 == value)
            .ok_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_their_wire_values() {
        // Wire order, with gaps where a value is another change's.
        for pair in MessageKind::ALL.windows(2) {
            assert!((pair[0] as u16) < (pair[1] as u16), "{pair:?}");
        }
        for (index, kind) in MessageKind::ALL.iter().take(22).enumerate() {
            assert_eq!(usize::from(*kind as u16), index + 1);
        }
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::try_from(kind as u16), Ok(kind));
        }
        assert!(
            MessageKind::ALL.windows(2).all(|pair| pair[0] < pair[1]),
            "wire order"
        );
        assert_eq!(MessageKind::Resize as u16, 28);
        assert_eq!(MessageKind::try_from(0), Err(0));
        assert_eq!(MessageKind::try_from(29), Err(29));
    }

    #[test]
    fn every_kind_has_the_direction_of_the_specification() {
        use Direction::{AgentToHost, Both, HostToAgent};
        // Written out again, in wire order, from the protocol description:
        // a change to the table must be a change to this list too.
        let expected = [
            (MessageKind::Hello, HostToAgent),
            (MessageKind::HelloAck, AgentToHost),
            (MessageKind::Ping, Both),
            (MessageKind::Pong, Both),
            (MessageKind::Execute, HostToAgent),
            (MessageKind::Stdin, HostToAgent),
            (MessageKind::StdinClose, HostToAgent),
            (MessageKind::Stdout, AgentToHost),
            (MessageKind::Stderr, AgentToHost),
            (MessageKind::ExecResult, AgentToHost),
            (MessageKind::Signal, HostToAgent),
            (MessageKind::Stop, Both),
            (MessageKind::StatusRequest, HostToAgent),
            (MessageKind::StatusReport, AgentToHost),
            (MessageKind::FilePut, HostToAgent),
            (MessageKind::FileGet, HostToAgent),
            (MessageKind::FileInfo, AgentToHost),
            (MessageKind::FileData, Both),
            (MessageKind::FileEnd, Both),
            (MessageKind::FileDone, AgentToHost),
            (MessageKind::WindowUpdate, Both),
            (MessageKind::Error, Both),
            (MessageKind::FsRequest, HostToAgent),
            (MessageKind::FsResult, AgentToHost),
            (MessageKind::TreePut, HostToAgent),
            (MessageKind::TreeGet, HostToAgent),
            (MessageKind::TreeDone, AgentToHost),
            (MessageKind::Resize, HostToAgent),
        ];
        let kinds: Vec<MessageKind> = expected.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, MessageKind::ALL, "one entry per kind, in wire order");
        for (kind, direction) in expected {
            assert_eq!(kind.direction(), direction, "{kind:?}");
        }
    }

    #[test]
    fn names_are_unique_and_upper_case() {
        let mut names: Vec<&str> = MessageKind::ALL.iter().map(|kind| kind.name()).collect();
        assert!(
            names
                .iter()
                .all(|name| { name.chars().all(|c| c.is_ascii_uppercase() || c == '_') })
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MessageKind::ALL.len());
        assert_eq!(MessageKind::ExecResult.name(), "RESULT");
    }

    #[test]
    fn directions_say_who_may_send() {
        assert!(Direction::HostToAgent.host_may_send());
        assert!(!Direction::HostToAgent.agent_may_send());
        assert!(!Direction::AgentToHost.host_may_send());
        assert!(Direction::AgentToHost.agent_may_send());
        assert!(Direction::Both.host_may_send());
        assert!(Direction::Both.agent_may_send());
    }
}
