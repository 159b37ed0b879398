//! What meta asks of volume servers, behind a trait so that the meta logic can be tested without them.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use hoard_proto::v1::{self, volume_client::VolumeClient};
use parking_lot::Mutex;
use tonic::transport::Channel;

pub trait VolumeOps: Send + Sync + 'static {
    /// Creates one extent on the volume server at `address`.
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// [`VolumeOps`] over gRPC, one lazily connected channel per volume server.
#[derive(Default)]
pub struct GrpcVolumeOps {
    clients: Mutex<HashMap<String, VolumeClient<Channel>>>,
}

impl GrpcVolumeOps {
    fn client(&self, address: &str) -> Result<VolumeClient<Channel>, String> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let ep = hoard_proto::endpoint(&format!("http://{address}"))
            .map_err(|e| format!("bad volume server address {address:?}: {e}"))?
            .timeout(Duration::from_secs(30));
        let c = VolumeClient::new(ep.connect_lazy());
        clients.insert(address.to_string(), c.clone());
        Ok(c)
    }
}

impl VolumeOps for GrpcVolumeOps {
    fn create_extent(
        &self,
        address: String,
        req: v1::CreateExtentRequest,
    ) -> BoxFuture<'static, Result<(), String>> {
        let client = self.client(&address);
        Box::pin(async move {
            let mut c = client?;
            c.create_extent(req)
                .await
                .map(|_| ())
                .map_err(|s| format!("{address}: {}", s.message()))
        })
    }
}
