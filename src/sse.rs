//! The Server-Sent Events wire format, in one place: the message each
//! event is sent as (`id: <seq>\ndata: {"seq":<seq>,"event":<event>}\n\n`),
//! the same `{"seq":N,"event":...}` object pages of `GET /events` list, the
//! `retry:` line, heartbeats and the named `event: gone` / `event: error`
//! frames that end a stream. The store builds each recent event's message
//! once, in place ([`SseFrame::in_place`]); the HTTP layer sends it, or
//! builds one with [`write_message`] for an event read from disk. Below
//! both `event` and `store`; depends on neither.

use bytes::Bytes;

/// Room left in front of each prepared event for the prefix of its
/// Server-Sent Events message, `id: <seq>\ndata: {"seq":<seq>,"event":`
/// (at most 67 bytes with two 20-digit seqs). The writer fills it in once it
/// knows the seq ([`SseFrame::in_place`]), so the message every live
/// subscriber is sent is built around the event without copying it. The
/// copy, its allocation and the release of the handler's buffer ran on the
/// writer, the one serial stage of publishing (in a batch profile, the
/// release alone was 3.5% of the writer's samples).
pub const FRAME_HEADROOM: usize = 67;

/// What ends every event's Server-Sent Events message (after the event).
pub const FRAME_END: &[u8] = b"}\n\n";

/// An event's Server-Sent Events message,
/// `id: <seq>\ndata: {"seq":<seq>,"event":<event>}\n\n`, with the event
/// inside it (so the cache holds each event once).
#[derive(Debug, Clone)]
pub struct SseFrame {
    frame: Bytes,
    event_start: u32,
    /// Bytes of memory the frame's buffer holds (its capacity, not its
    /// length: see [`SseFrame::footprint`]).
    allocated: u32,
}

impl SseFrame {
    /// The message for `event` at `seq`, built in place: `buf` is
    /// [`FRAME_HEADROOM`] bytes of room followed by the event, as a
    /// [`PreparedEvent`](crate::event::PreparedEvent) holds it. The prefix is
    /// written into the room and the event is not copied.
    pub fn in_place(seq: u64, mut buf: Vec<u8>) -> Self {
        use std::io::Write as _;
        let mut prefix = [0u8; FRAME_HEADROOM];
        let mut room = &mut prefix[..];
        write!(room, "id: {seq}\ndata: {{\"seq\":{seq},\"event\":")
            .expect("FRAME_HEADROOM fits two u64s");
        let len = FRAME_HEADROOM - room.len();
        let start = FRAME_HEADROOM - len;
        buf[start..FRAME_HEADROOM].copy_from_slice(&prefix[..len]);
        buf.extend_from_slice(FRAME_END);
        let allocated = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
        let mut frame = Bytes::from(buf);
        // `advance` moves the start; `slice` would clone the handle, which
        // for a `Bytes` made from a `Vec` allocates a shared header.
        bytes::Buf::advance(&mut frame, start);
        SseFrame {
            frame,
            event_start: len as u32,
            allocated,
        }
    }

    /// The memory this frame keeps alive: its buffer's capacity (an event's
    /// buffer is sized before its attributes are filled in, so it is
    /// larger than the message), the shared header of a `Bytes` made from a
    /// `Vec` whose capacity is not its length, and the frame itself. A
    /// cache bounded by message lengths held about 1.6 times its bound.
    pub fn footprint(&self) -> usize {
        const BYTES_SHARED_HEADER: usize = 32;
        self.allocated as usize + BYTES_SHARED_HEADER + std::mem::size_of::<Self>()
    }

    /// The message for `event` at `seq`, copying the event.
    pub fn copied(seq: u64, event: &[u8]) -> Self {
        let mut buf = buffer(event.len());
        buf.extend_from_slice(event);
        Self::in_place(seq, buf)
    }

    /// The whole message.
    pub fn message(&self) -> &Bytes {
        &self.frame
    }

    /// The event bytes as stored.
    pub fn event(&self) -> Bytes {
        self.frame
            .slice(self.event_start as usize..self.frame.len() - FRAME_END.len())
    }
}

/// An empty message buffer: [`FRAME_HEADROOM`] bytes of room, and
/// capacity for `len` bytes of event plus the end of the message.
pub fn buffer(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FRAME_HEADROOM + len + FRAME_END.len());
    buf.resize(FRAME_HEADROOM, 0);
    buf
}

/// Appends `{"seq":N,"event":<event>}`: an event as `GET /events/{seq}`
/// answers it, as pages list it, and as each message's data carries it.
pub fn write_event(out: &mut Vec<u8>, seq: u64, event: &[u8]) {
    open_event(out, seq);
    out.extend_from_slice(event);
    close_event(out);
}

/// Appends what [`write_event`] writes before the event's bytes, for a
/// writer that sends the bytes themselves as a separate chunk.
pub fn open_event(out: &mut Vec<u8>, seq: u64) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
}

/// Appends what [`write_event`] writes after the event's bytes.
pub fn close_event(out: &mut Vec<u8>) {
    out.push(b'}');
}

/// Appends the message for `event` at `seq` (for an event read from disk;
/// recent events carry theirs ready-made, [`SseFrame::message`]).
pub fn write_message(out: &mut Vec<u8>, seq: u64, event: &[u8]) {
    out.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
    write_event(out, seq, event);
    out.extend_from_slice(b"\n\n");
}

/// The first thing a stream sends: how long a client waits to reconnect.
pub fn retry(ms: u64) -> Vec<u8> {
    format!("retry: {ms}\n\n").into_bytes()
}

/// A comment sent when a stream is idle, so proxies keep it open.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Appends a named event (`event: gone`, `event: error`) with `data` (a
/// problem+json document): the last thing a stream sends before it ends.
pub fn write_named(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(format!("event: {name}\ndata: ").as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_built_in_place_are_the_sse_message_around_the_event() {
        let event = br#"{"type":"t","source":"/s","id":"1"}"#;
        for seq in [0, 7, 1_000_000, u64::MAX] {
            let expected = format!(
                "id: {seq}\ndata: {{\"seq\":{seq},\"event\":{}}}\n\n",
                std::str::from_utf8(event).unwrap()
            );
            let mut buf = buffer(event.len());
            buf.extend_from_slice(event);
            let in_place = SseFrame::in_place(seq, buf);
            assert_eq!(in_place.message(), expected.as_bytes(), "seq {seq}");
            assert_eq!(&in_place.event()[..], &event[..], "seq {seq}");
            let copied = SseFrame::copied(seq, event);
            assert_eq!(copied.message(), in_place.message());
        }
    }

    #[test]
    fn a_message_written_for_an_event_read_from_disk_equals_the_cached_one() {
        let event = br#"{"id":"1"}"#;
        let mut out = Vec::new();
        write_message(&mut out, 42, event);
        assert_eq!(&out[..], &SseFrame::copied(42, event).message()[..]);
    }
}
