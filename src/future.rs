//! The response future shared by layers that decide before calling the inner service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's future, or a ready denial.
    #[project = ShieldFutureProj]
    #[allow(missing_docs)]
    pub enum ShieldFuture<F, B> {
        /// The request was passed on.
        Inner {
            #[pin]
            fut: F,
        },
        /// The request was refused; the denial response is ready.
        Denied {
            res: Option<Response<B>>,
        },
    }
}

impl<F, B> ShieldFuture<F, B> {
    /// Wraps the inner future.
    pub fn inner(fut: F) -> Self {
        Self::Inner { fut }
    }
    /// A ready denial response.
    pub fn denied(res: Response<B>) -> Self {
        Self::Denied { res: Some(res) }
    }
}

impl<F, B, E> Future for ShieldFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShieldFutureProj::Inner { fut } => fut.poll(cx),
            ShieldFutureProj::Denied { res } => Poll::Ready(Ok(res
                .take()
                .expect("ShieldFuture polled after completion"))),
        }
    }
}
