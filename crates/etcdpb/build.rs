//! Generates the tonic server and client stubs for etcd's gRPC services with
//! `tonic_build::manual`: no protoc, no .proto files. The message types they name are the
//! hand-declared ones in `src/`. Each service lands in `$OUT_DIR/<package>.<Service>.rs`.

use tonic_build::manual::{Builder, Method, Service};

/// How a method streams: neither side, the server only, or both sides.
#[derive(Clone, Copy)]
enum Streaming {
    Unary,
    Server,
    Bidi,
}

/// One RPC: the Rust method name, the route name (etcd's exact method name), the request and
/// response types as paths from the crate root, and its streaming shape.
struct Rpc(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Streaming,
);

fn service(package: &str, name: &str, rpcs: &[Rpc]) -> Service {
    let mut builder = Service::builder().name(name).package(package);
    for Rpc(method, route, input, output, streaming) in rpcs {
        let mut m = Method::builder()
            .name(*method)
            .route_name(*route)
            .input_type(format!("crate::{input}"))
            .output_type(format!("crate::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        match streaming {
            Streaming::Unary => {}
            Streaming::Server => m = m.server_streaming(),
            Streaming::Bidi => m = m.client_streaming().server_streaming(),
        }
        builder = builder.method(m.build());
    }
    builder.build()
}

fn main() {
    use Streaming::{Bidi, Server, Unary};
    const PB: &str = "etcdserverpb";

    let kv = service(
        PB,
        "KV",
        &[
            Rpc(
                "range",
                "Range",
                "etcdserverpb::RangeRequest",
                "etcdserverpb::RangeResponse",
                Unary,
            ),
            Rpc(
                "put",
                "Put",
                "etcdserverpb::PutRequest",
                "etcdserverpb::PutResponse",
                Unary,
            ),
            Rpc(
                "delete_range",
                "DeleteRange",
                "etcdserverpb::DeleteRangeRequest",
                "etcdserverpb::DeleteRangeResponse",
                Unary,
            ),
            Rpc(
                "txn",
                "Txn",
                "etcdserverpb::TxnRequest",
                "etcdserverpb::TxnResponse",
                Unary,
            ),
            Rpc(
                "compact",
                "Compact",
                "etcdserverpb::CompactionRequest",
                "etcdserverpb::CompactionResponse",
                Unary,
            ),
        ],
    );

    let watch = service(
        PB,
        "Watch",
        &[Rpc(
            "watch",
            "Watch",
            "etcdserverpb::WatchRequest",
            "etcdserverpb::WatchResponse",
            Bidi,
        )],
    );

    let lease = service(
        PB,
        "Lease",
        &[
            Rpc(
                "lease_grant",
                "LeaseGrant",
                "etcdserverpb::LeaseGrantRequest",
                "etcdserverpb::LeaseGrantResponse",
                Unary,
            ),
            Rpc(
                "lease_revoke",
                "LeaseRevoke",
                "etcdserverpb::LeaseRevokeRequest",
                "etcdserverpb::LeaseRevokeResponse",
                Unary,
            ),
            Rpc(
                "lease_keep_alive",
                "LeaseKeepAlive",
                "etcdserverpb::LeaseKeepAliveRequest",
                "etcdserverpb::LeaseKeepAliveResponse",
                Bidi,
            ),
            Rpc(
                "lease_time_to_live",
                "LeaseTimeToLive",
                "etcdserverpb::LeaseTimeToLiveRequest",
                "etcdserverpb::LeaseTimeToLiveResponse",
                Unary,
            ),
            Rpc(
                "lease_leases",
                "LeaseLeases",
                "etcdserverpb::LeaseLeasesRequest",
                "etcdserverpb::LeaseLeasesResponse",
                Unary,
            ),
        ],
    );

    let cluster = service(
        PB,
        "Cluster",
        &[
            Rpc(
                "member_add",
                "MemberAdd",
                "etcdserverpb::MemberAddRequest",
                "etcdserverpb::MemberAddResponse",
                Unary,
            ),
            Rpc(
                "member_remove",
                "MemberRemove",
                "etcdserverpb::MemberRemoveRequest",
                "etcdserverpb::MemberRemoveResponse",
                Unary,
            ),
            Rpc(
                "member_update",
                "MemberUpdate",
                "etcdserverpb::MemberUpdateRequest",
                "etcdserverpb::MemberUpdateResponse",
                Unary,
            ),
            Rpc(
                "member_list",
                "MemberList",
                "etcdserverpb::MemberListRequest",
                "etcdserverpb::MemberListResponse",
                Unary,
            ),
            Rpc(
                "member_promote",
                "MemberPromote",
                "etcdserverpb::MemberPromoteRequest",
                "etcdserverpb::MemberPromoteResponse",
                Unary,
            ),
        ],
    );

    let maintenance = service(
        PB,
        "Maintenance",
        &[
            Rpc(
                "alarm",
                "Alarm",
                "etcdserverpb::AlarmRequest",
                "etcdserverpb::AlarmResponse",
                Unary,
            ),
            Rpc(
                "status",
                "Status",
                "etcdserverpb::StatusRequest",
                "etcdserverpb::StatusResponse",
                Unary,
            ),
            Rpc(
                "defragment",
                "Defragment",
                "etcdserverpb::DefragmentRequest",
                "etcdserverpb::DefragmentResponse",
                Unary,
            ),
            Rpc(
                "hash",
                "Hash",
                "etcdserverpb::HashRequest",
                "etcdserverpb::HashResponse",
                Unary,
            ),
            Rpc(
                "hash_kv",
                "HashKV",
                "etcdserverpb::HashKvRequest",
                "etcdserverpb::HashKvResponse",
                Unary,
            ),
            Rpc(
                "snapshot",
                "Snapshot",
                "etcdserverpb::SnapshotRequest",
                "etcdserverpb::SnapshotResponse",
                Server,
            ),
            Rpc(
                "move_leader",
                "MoveLeader",
                "etcdserverpb::MoveLeaderRequest",
                "etcdserverpb::MoveLeaderResponse",
                Unary,
            ),
            Rpc(
                "downgrade",
                "Downgrade",
                "etcdserverpb::DowngradeRequest",
                "etcdserverpb::DowngradeResponse",
                Unary,
            ),
        ],
    );

    let lock = service(
        "v3lockpb",
        "Lock",
        &[
            Rpc(
                "lock",
                "Lock",
                "v3lockpb::LockRequest",
                "v3lockpb::LockResponse",
                Unary,
            ),
            Rpc(
                "unlock",
                "Unlock",
                "v3lockpb::UnlockRequest",
                "v3lockpb::UnlockResponse",
                Unary,
            ),
        ],
    );

    let election = service(
        "v3electionpb",
        "Election",
        &[
            Rpc(
                "campaign",
                "Campaign",
                "v3electionpb::CampaignRequest",
                "v3electionpb::CampaignResponse",
                Unary,
            ),
            Rpc(
                "proclaim",
                "Proclaim",
                "v3electionpb::ProclaimRequest",
                "v3electionpb::ProclaimResponse",
                Unary,
            ),
            Rpc(
                "leader",
                "Leader",
                "v3electionpb::LeaderRequest",
                "v3electionpb::LeaderResponse",
                Unary,
            ),
            Rpc(
                "observe",
                "Observe",
                "v3electionpb::LeaderRequest",
                "v3electionpb::LeaderResponse",
                Server,
            ),
            Rpc(
                "resign",
                "Resign",
                "v3electionpb::ResignRequest",
                "v3electionpb::ResignResponse",
                Unary,
            ),
        ],
    );

    Builder::new().compile(&[kv, watch, lease, cluster, maintenance, lock, election]);
    println!("cargo:rerun-if-changed=build.rs");
}
