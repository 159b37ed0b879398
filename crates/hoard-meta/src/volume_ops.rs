//! What meta asks of volume servers, behind a trait so that the meta logic can be tested without them.

use futures::future::BoxFuture;
use hoard_proto::v1;

pub trait VolumeOps: Send + Sync + 'static {
    /// Creates one extent on the volume server at `address`.
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// [`VolumeOps`] over gRPC.
#[derive(Default)]
pub struct GrpcVolumeOps {
    clients: hoard_proto::VolumeClients,
}

impl VolumeOps for GrpcVolumeOps {
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>> {
        let client = self.clients.get(&address);
        Box::pin(async move {
            let mut c = client?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(std::time::Duration::from_secs(30));
            c.create_extent(r)
                .await
                .map(|_| ())
                .map_err(|s| format!("{address}: {}", s.message()))
        })
    }
}
