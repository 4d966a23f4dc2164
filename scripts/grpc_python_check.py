#!/usr/bin/env python3
"""Talks to a running berth-engine from Python using ONLY gRPC server reflection.

No .proto files and no generated code: the descriptors come from the server's reflection
service (v1alpha, through grpcio-reflection's ProtoReflectionDescriptorDatabase), the
message classes are built from them at run time (google.protobuf descriptor_pool +
message_factory), and the calls are made on a plain grpc channel. Checks:

- reflection lists berth.v1.Placement, berth.v1.Scheduler, berth.v1.Catalog and
  grpc.health.v1.Health;
- Placement/CreateResourceProvider creates two hosts (the reply is checked field by field);
- Scheduler/SelectDestinations places two instances on them (selections checked);
- a request no host can take fails with RESOURCE_EXHAUSTED whose grpc-status-details-bin
  decodes as berth.v1.NoValidHostDetail;
- an x-request-id sent in metadata comes back in the response metadata;
- a call without the bearer token fails with UNAUTHENTICATED (reflection needs none).

Usage: BERTH_TOKEN=... grpc_python_check.py HOST:PORT   (exit status 0 and a final "OK"
line on success; BERTH_TOKEN is an admin token, e.g. the engine's <data-dir>/admin.token)
"""

import os
import sys
import uuid

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# Every berth.v1 call carries the token; reflection and health need none.
AUTH = (("authorization", "Bearer " + os.environ.get("BERTH_TOKEN", "").strip()),)

BERTH_SERVICES = {"berth.v1.Placement", "berth.v1.Scheduler", "berth.v1.Catalog"}


def fail(msg):
    print(f"grpc_python_check: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Reflected:
    """Message classes and unary callables, all built from server reflection."""

    def __init__(self, channel):
        self.channel = channel
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def services(self):
        return set(self.db.get_services())

    def message(self, full_name):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def method(self, service, name):
        """(callable, request class, response class) for service/method."""
        svc = self.pool.FindServiceByName(service)
        m = svc.FindMethodByName(name)
        check(m is not None, f"{service} has no method {name}")
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        call = self.channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return call, req_cls, resp_cls


def main():
    if len(sys.argv) != 2:
        fail("usage: grpc_python_check.py HOST:PORT")
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=20)
        except grpc.FutureTimeoutError:
            fail(f"no connection to {target} within 20 s")
        r = Reflected(channel)

        services = r.services()
        missing = (BERTH_SERVICES | {"grpc.health.v1.Health"}) - services
        check(not missing, f"reflection does not list {sorted(missing)} (got {sorted(services)})")

        # ---- Placement/CreateResourceProvider ----
        create, CreateReq, _ = r.method("berth.v1.Placement", "CreateResourceProvider")
        suffix = uuid.uuid4().hex[:8]
        hosts = {}
        for i, (vcpus, ram) in enumerate([(8, 8192), (16, 16384)]):
            req = CreateReq()
            req.name = f"py-host-{suffix}-{i}"
            req.availability_zone = "py-az"
            req.traits.append("CUSTOM_FROM_PYTHON")
            for cls, total in (("VCPU", vcpus), ("MEMORY_MB", ram), ("DISK_GB", 100)):
                inv = req.inventories.add()
                inv.resource_class = cls
                inv.total = total
            resp = create(req, timeout=10, metadata=AUTH)
            p = resp.provider
            check(p.name == req.name, f"created provider is named {p.name!r}")
            check(str(uuid.UUID(p.uuid)) == p.uuid, f"provider uuid {p.uuid!r} is not canonical")
            check(p.availability_zone == "py-az", f"zone {p.availability_zone!r}")
            check(list(p.traits) == ["CUSTOM_FROM_PYTHON"], f"traits {list(p.traits)}")
            classes = [i.resource_class for i in p.inventories]
            check(classes == ["DISK_GB", "MEMORY_MB", "VCPU"], f"inventories {classes}")
            vcpu = [i for i in p.inventories if i.resource_class == "VCPU"][0]
            check(
                (vcpu.total, vcpu.min_unit, vcpu.max_unit, vcpu.step_size, vcpu.allocation_ratio)
                == (vcpus, 1, 2147483647, 1, 1.0),
                f"VCPU inventory with defaults: {vcpu}",
            )
            check(all(u.used == 0 for u in p.usages), "a new provider has no usage")
            hosts[p.uuid] = p.name

        # ---- Scheduler/SelectDestinations ----
        select, SelectReq, _ = r.method("berth.v1.Scheduler", "SelectDestinations")
        req = SelectReq()
        req.spec.project_id = "py-project"
        req.spec.user_id = "py-user"
        req.spec.availability_zone = "py-az"
        req.spec.required_traits.append("CUSTOM_FROM_PYTHON")
        req.spec.num_instances = 2
        for cls, amount in (("VCPU", 2), ("MEMORY_MB", 1024)):
            a = req.spec.resources.add()
            a.resource_class = cls
            a.amount = amount
        resp, call = select.with_call(
            req, timeout=10, metadata=AUTH + (("x-request-id", f"py-{suffix}"),)
        )
        sels = list(resp.selections)
        check(len(sels) == 2, f"{len(sels)} selections for 2 instances")
        consumers = set()
        for s in sels:
            check(s.host_uuid in hosts, f"selection on unknown host {s.host_uuid}")
            check(hosts[s.host_uuid] == s.host_name, f"host name {s.host_name!r}")
            consumers.add(s.consumer_uuid)
            check(len(s.allocations) == 1, f"allocations {s.allocations}")
            got = {x.resource_class: x.amount for x in s.allocations[0].resources}
            check(got == {"VCPU": 2, "MEMORY_MB": 1024}, f"claimed {got}")
        check(len(consumers) == 2, "two distinct consumers")
        echoed = dict(call.initial_metadata()).get("x-request-id")
        check(echoed == f"py-{suffix}", f"x-request-id echoed as {echoed!r}")

        # The claims are visible through Placement.
        usages, UsagesReq, _ = r.method("berth.v1.Placement", "GetProviderUsages")
        used = 0
        for host in hosts:
            u = usages(UsagesReq(uuid=host), timeout=10, metadata=AUTH)
            used += sum(x.used for x in u.usages if x.resource_class == "VCPU")
        check(used == 4, f"{used} VCPU used after two claims of 2")

        # ---- No valid host: RESOURCE_EXHAUSTED with a NoValidHostDetail ----
        req.spec.num_instances = 1
        del req.spec.resources[:]
        a = req.spec.resources.add()
        a.resource_class = "MEMORY_MB"
        a.amount = 1 << 30
        try:
            select(req, timeout=10, metadata=AUTH)
            fail("an impossible request was placed")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"code {e.code()}")
            check("no valid host" in e.details(), f"message {e.details()!r}")
            raw = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin")
            check(raw is not None, "no grpc-status-details-bin")
            Detail = r.message("berth.v1.NoValidHostDetail")
            d = Detail.FromString(raw)
            check(d.hosts_considered >= 2, f"hosts_considered {d.hosts_considered}")
            check(len(d.rejections) > 0, "no rejections in the detail")
            check(
                all(x.filter in e.details() for x in d.rejections),
                f"rejections {list(d.rejections)} vs message {e.details()!r}",
            )

        # ---- No token: UNAUTHENTICATED, saying what to send ----
        try:
            select(req, timeout=10)
            fail("a call without a token was answered")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"code {e.code()} without a token")
            check("Bearer" in e.details(), f"message {e.details()!r}")

    print(
        f"grpc_python_check: OK ({len(services)} services via reflection, "
        f"{len(hosts)} providers created, {len(sels)} instances placed)"
    )


if __name__ == "__main__":
    main()
