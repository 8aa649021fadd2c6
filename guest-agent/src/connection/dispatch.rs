//! Requests: opening one, the pipeline every request runs through, and
//! routing the later frames of open requests to them.

use paddock_proto::{Message, MessageKind};
use tracing::{Instrument, debug, info_span};

use super::{Answer, Connection, SessionError, Step};
use crate::request::{Handler, Inputs, Rejection, RequestCtx, WireError};

impl Connection {
    /// Opens request `id` for `request` and runs it through [`pipeline`] in a
    /// task of its own.
    pub(super) async fn open<H: Handler>(
        &mut self,
        id: u64,
        kind: MessageKind,
        request: H,
    ) -> Step {
        let Some(session) = self.session.clone() else {
            return self
                .reject(id, Answer::OnItsId, &SessionError::NotNegotiated)
                .await;
        };
        match session.open(id, request.flow()) {
            Ok((ctx, inputs)) => {
                self.tasks.spawn(pipeline(ctx, kind, request, inputs));
                Step::Continue
            }
            Err(refused) => self.reject(id, Answer::OnItsId, &refused.into()).await,
        }
    }

    /// Routes a data frame of `len` bytes, checking it against the window.
    /// Data for a request that takes none ends it at once: such frames are
    /// not bounded by a window, so they are never queued.
    pub(super) async fn data(&mut self, id: u64, len: usize, message: Message) -> Step {
        let Some(handle) = self.session.as_ref().and_then(|s| s.handle(id)) else {
            let err = SessionError::UnknownRequest(id);
            return self.reject(id, Answer::OnConnection, &err).await;
        };
        match handle.receive(len) {
            Some(Ok(())) => handle.deliver(message),
            Some(Err(err)) => handle.reject(SessionError::FlowControl(err).report()),
            None => handle.reject(Rejection::Unexpected(message.kind()).report()),
        }
        Step::Continue
    }

    /// Applies credit. Credit for a request that is not open is ignored: the
    /// host returns credit as it consumes data, which races with the
    /// request's last frame, so such updates are normal. Credit for a
    /// request that sends no data ends it.
    pub(super) fn window_update(&mut self, id: u64, increment: u32) -> Step {
        let Some(handle) = self.session.as_ref().and_then(|s| s.handle(id)) else {
            debug!(id, "Ignored WINDOW_UPDATE for a request that is not open");
            return Step::Continue;
        };
        match handle.grant(increment) {
            Some(Ok(())) => {}
            Some(Err(err)) => handle.reject(SessionError::FlowControl(err).report()),
            None => handle.reject(Rejection::Unexpected(MessageKind::WindowUpdate).report()),
        }
        Step::Continue
    }

    /// Hands a control frame (STDIN_CLOSE, SIGNAL, STOP, FILE_END) to its
    /// open request.
    pub(super) async fn forward(&mut self, id: u64, message: Message) -> Step {
        match self.session.as_ref().and_then(|s| s.handle(id)) {
            Some(handle) => handle.deliver(message),
            None => {
                let err = SessionError::UnknownRequest(id);
                return self.reject(id, Answer::OnConnection, &err).await;
            }
        }
        Step::Continue
    }

    /// Hands a RESIZE to its execution. One for a request that is not open
    /// is dropped: a window change crossing RESULT is normal, and the
    /// terminal it was for is gone.
    pub(super) async fn resize(&mut self, id: u64, message: Message) -> Step {
        match self.session.as_ref().and_then(|s| s.handle(id)) {
            Some(_) => return self.forward(id, message).await,
            None => debug!(id, "RESIZE for a request that is not open: ignored"),
        }
        Step::Continue
    }
}

/// Runs one request. Every request takes the same steps, in the order of
/// the kata agent's RPC edge:
///
/// 1. Trace: a span for the request, which every event of its task carries.
/// 2. Policy gate: the place where a later issue checks the request against
///    the sandbox's policy, before anything of it runs, and ends a refused
///    request with ERROR. There is no gate yet: every request goes on.
/// 3. Do: the handler, up to the message that ends the request.
/// 4. Map the error: a failure becomes the request's ERROR frame, with the
///    error's wire code and its whole source chain.
async fn pipeline<H: Handler>(ctx: RequestCtx, kind: MessageKind, request: H, inputs: Inputs) {
    let span = info_span!("request", id = ctx.id(), ?kind);
    async move {
        // Step 2, the policy gate, goes here (see above).
        let outcome = request.handle(&ctx, inputs).await;
        ctx.finish(outcome.map_err(|err| err.report())).await;
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use paddock_proto::{ErrorCode, Execute};

    use super::*;
    use crate::test_host::{
        TestHost, assert_no_process_with, error_code, hello, test_config, wait_for_process,
    };

    #[tokio::test]
    async fn request_ids_are_checked() {
        let mut config = test_config();
        config.max_requests = 1;
        let mut host = TestHost::start(config);
        host.hello(hello()).await;

        host.send(0, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::DuplicateRequest)
        );
        // Frames of a request that is not open are answered on id 0.
        host.send(42, &Message::Stdin(b"x".to_vec())).await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::UnknownRequest)
        );
        // Credit for a closed request races with its end: it is ignored.
        host.send(43, &Message::WindowUpdate(1)).await;
        host.send(44, &Message::Ping).await;
        assert_eq!(host.recv().await, (44, Message::Pong));

        let marker = "1000.201";
        host.send(1, &Message::Execute(Execute::argv(["sleep", marker])))
            .await;
        wait_for_process(marker).await;
        host.send(2, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (2, ErrorCode::TooManyRequests)
        );
        // Reusing an open id ends that request with the ERROR.
        host.send(1, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (1, ErrorCode::DuplicateRequest)
        );
        assert_no_process_with(marker).await;
        // The id is free again.
        host.send(1, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert!(matches!(host.collect(1).await.last, Message::ExecResult(_)));
    }
}
