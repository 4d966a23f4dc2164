//! Berth's gRPC contract, package `berth.v1`.
//!
//! The contract lives in `proto/berth/v1/*.proto` and is compiled at build time (with
//! `protox`, so no `protoc` is needed) into [`v1`]: the messages plus, for each of the five
//! services, a client and a server:
//!
//! | Service     | Client                                    | Server                                    |
//! |-------------|-------------------------------------------|-------------------------------------------|
//! | `Placement` | [`v1::placement_client::PlacementClient`] | [`v1::placement_server::PlacementServer`] |
//! | `Scheduler` | [`v1::scheduler_client::SchedulerClient`] | [`v1::scheduler_server::SchedulerServer`] |
//! | `Catalog`   | [`v1::catalog_client::CatalogClient`]     | [`v1::catalog_server::CatalogServer`]     |
//! | `Servers`   | [`v1::servers_client::ServersClient`]     | [`v1::servers_server::ServersServer`]     |
//! | `Nodes`     | [`v1::nodes_client::NodesClient`]         | [`v1::nodes_server::NodesServer`]         |
//!
//! Conventions shared by every RPC (id formats, units, generations, paging, and which
//! gRPC status code means what) are documented at the top of `common.proto`. A "no valid
//! host" failure is `RESOURCE_EXHAUSTED` whose status details are an encoded
//! [`v1::NoValidHostDetail`].
//!
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set of all the files, for gRPC
//! server reflection.

/// Messages, clients and servers of package `berth.v1`, generated from the `.proto` files.
// Docs here are generated: prost turns the proto comments into rustdoc, and tonic documents
// its own client/server items. Today every item ends up documented, but generated code is
// not ours to fix (a new prost/tonic may emit undocumented plumbing, e.g. for oneofs), so
// the workspace's `missing_docs` lint is relaxed here. Document the contract in the
// `.proto` files instead.
#[allow(missing_docs)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `berth.v1` file (with source
/// info), for `tonic-reflection`'s `register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::FILE_DESCRIPTOR_SET;

    #[test]
    fn descriptor_set_holds_every_file_and_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set written by build.rs decodes");
        let mut files: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
        files.sort_unstable();
        assert_eq!(
            files,
            [
                "berth/v1/catalog.proto",
                "berth/v1/common.proto",
                "berth/v1/nodes.proto",
                "berth/v1/placement.proto",
                "berth/v1/scheduler.proto",
                "berth/v1/servers.proto",
            ]
        );
        let mut services: Vec<&str> = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .map(|s| s.name())
            .collect();
        services.sort_unstable();
        assert_eq!(
            services,
            ["Catalog", "Nodes", "Placement", "Scheduler", "Servers"]
        );
        assert!(fds.file.iter().all(|f| f.package() == "berth.v1"));
    }

    #[test]
    fn generated_service_names_are_fully_qualified() {
        use super::v1::scheduler_server::SchedulerServer;
        use super::v1::{catalog_server::CatalogServer, placement_server::PlacementServer};
        use tonic::server::NamedService;
        assert_eq!(
            <PlacementServer<()> as NamedService>::NAME,
            "berth.v1.Placement"
        );
        assert_eq!(
            <SchedulerServer<()> as NamedService>::NAME,
            "berth.v1.Scheduler"
        );
        assert_eq!(
            <CatalogServer<()> as NamedService>::NAME,
            "berth.v1.Catalog"
        );
    }
}
