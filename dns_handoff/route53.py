"""Amazon Route 53 through boto3: record sets, weighted routing, and GetChange until INSYNC.

This module is responsible for one hosted zone: reading every record set of a name and
type (plain, or all its weighted sets), changing them with ChangeResourceRecordSets, and
polling GetChange until Route 53 reports the change INSYNC on all its name servers, with
a deadline. ``endpoint_url`` is the only thing that differs between the tests (moto's
server on loopback) and production (``None``: the real AWS endpoint); credentials come
from boto3's usual chain unless given.

Compare-and-swap: ``replace`` first reads the sets and refuses if they are not ``old``,
then sends DELETE for each old set and CREATE for each new one in one change batch. Route
53 applies a batch all or nothing, refuses a DELETE whose values differ from the current
ones and a CREATE of a set that exists, which closes the window between our read and the
batch; a record somebody else changed is never overwritten (:class:`RecordSetConflict`).
moto's server does not enforce those DELETE/CREATE rules, so against it (the tests) the
read is what catches a conflict. Going from a
plain set to weighted sets (or back) needs exactly this: Route 53 never lets a plain and a
weighted set of the same name and type exist together.

It must never: touch a name outside its hosted zone, drop a record set field it does not
understand (alias targets, geo/latency/failover routing are refused when read, so a
restore can never silently lose them), or report a change in sync before GetChange says
INSYNC.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dns_handoff.provider import (
    ChangeId,
    DnsError,
    DnsProvider,
    NotInSync,
    RecordSet,
    RecordSetConflict,
    absolute,
    describe,
)

#: Returned when a replace has nothing to change: Route 53 refuses an empty change batch.
NO_CHANGE = ChangeId("")

#: Record set fields we carry through unchanged (so a restore is exact).
_CARRIED = ("HealthCheckId",)
#: Fields of routing policies we do not model; a set that has one is refused, not mangled.
_UNHANDLED = (
    "AliasTarget", "Region", "Failover", "GeoLocation", "GeoProximityLocation", "MultiValueAnswer",
    "TrafficPolicyInstanceId", "CidrRoutingConfig",
)
#: Route 53's own words when a DELETE or CREATE does not match what is there.
_CONFLICT = re.compile(r"not found|already exists|do not match|values provided", re.IGNORECASE)


def _order(rs: RecordSet) -> tuple[str, str, str]:
    return (rs.name, rs.rtype, rs.set_id or "")


def _unescape(name: str) -> str:
    """Route 53 lists names with ``\\ddd`` octal escapes (``\\052`` for ``*``)."""
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), name)


class Route53Provider(DnsProvider):
    """One Route 53 hosted zone."""

    supports_weights = True

    def __init__(
        self,
        hosted_zone_id: str,
        zone: str | None = None,
        *,
        client: Any | None = None,
        endpoint_url: str | None = None,
        region_name: str = "us-east-1",
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        # GetChange is rate limited (5 requests/s per account); polling every 2 s by default
        # leaves room for the rest of the hand-off's calls.
        self.hosted_zone_id = hosted_zone_id.rsplit("/", 1)[-1]
        self.poll_interval = poll_interval
        self.client = client or boto3.client(
            "route53",
            endpoint_url=endpoint_url,
            region_name=region_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            config=Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 5}),
        )
        if zone is None:
            zone = self._call("get_hosted_zone", f"read hosted zone {self.hosted_zone_id}", Id=self.hosted_zone_id)[
                "HostedZone"
            ]["Name"]
        self.zone = absolute(zone)

    # --- reading ---------------------------------------------------------------------

    def records(self, name: str, rtype: str) -> list[RecordSet]:
        name, rtype = self._in_zone(name), rtype.upper()
        found: list[RecordSet] = []
        params: dict[str, Any] = {"StartRecordName": name, "StartRecordType": rtype}
        while True:
            page = self._call(
                "list_resource_record_sets", f"list {name} {rtype}",
                HostedZoneId=self.hosted_zone_id, MaxItems="100", **params,
            )
            for raw in page["ResourceRecordSets"]:
                if absolute(_unescape(raw["Name"])) != name or raw["Type"] != rtype:
                    return found  # listed in order: past our name/type, nothing more of ours
                found.append(self._parse(raw))
            if not page.get("IsTruncated"):
                return found
            params = {"StartRecordName": page["NextRecordName"], "StartRecordType": page["NextRecordType"]}
            if page.get("NextRecordIdentifier"):
                params["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    # --- changing --------------------------------------------------------------------

    def upsert(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        return self._change([("UPSERT", rs) for rs in record_sets], f"upsert {describe(record_sets)}")

    def delete(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        return self._change([("DELETE", rs) for rs in record_sets], f"delete {describe(record_sets)}")

    def replace(self, old: Sequence[RecordSet], new: Sequence[RecordSet]) -> ChangeId:
        # Read first: a mismatch is then reported in our words, and the check holds on
        # servers that do not enforce DELETE/CREATE matching (moto does not). Route 53
        # itself closes the window between this read and the batch.
        for name, rtype in sorted({(rs.name, rs.rtype) for rs in [*old, *new]}):
            there = self.records(name, rtype)
            expected = [rs for rs in old if (rs.name, rs.rtype) == (name, rtype)]
            if sorted(there, key=_order) != sorted(expected, key=_order):
                raise RecordSetConflict(
                    f"zone {self.zone}: {name} {rtype} holds {describe(there)}, not {describe(expected)} as read; "
                    "refusing to replace it"
                )
        changes = [("DELETE", rs) for rs in old if rs not in new] + [("CREATE", rs) for rs in new if rs not in old]
        if not changes:
            return NO_CHANGE
        return self._change(changes, f"replace {describe(old)} with {describe(new)}")

    # --- in sync ---------------------------------------------------------------------

    def wait_in_sync(self, change: ChangeId, timeout: float) -> float:
        """Poll GetChange until INSYNC; raise :class:`NotInSync` with the last status at the deadline."""
        started = time.monotonic()
        if change == NO_CHANGE:
            return 0.0
        deadline = started + timeout
        while True:
            status = self._call("get_change", f"read change {change}", Id=change)["ChangeInfo"]["Status"]
            if status == "INSYNC":
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise NotInSync(
                    f"zone {self.zone} (hosted zone {self.hosted_zone_id}): change {change} still {status} after {timeout:g}s"
                )
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    # --- internals -------------------------------------------------------------------

    def _in_zone(self, name: str) -> str:
        name = absolute(name)
        if name != self.zone and not name.endswith("." + self.zone):
            raise DnsError(f"zone {self.zone}: name {name} is outside the hosted zone; refusing to touch it")
        return name

    def _parse(self, raw: dict[str, Any]) -> RecordSet:
        name = absolute(_unescape(raw["Name"]))
        unhandled = [k for k in _UNHANDLED if k in raw]
        if unhandled:
            raise DnsError(
                f"zone {self.zone}: record set {name} {raw['Type']} uses {', '.join(unhandled)}, which the hand-off "
                "does not handle; refusing it rather than lose those fields on a restore"
            )
        weight = raw.get("Weight")
        return RecordSet(
            name=name,
            rtype=raw["Type"],
            ttl=int(raw["TTL"]),
            values=tuple(r["Value"] for r in raw.get("ResourceRecords", [])),
            set_id=raw.get("SetIdentifier"),
            weight=None if weight is None else int(weight),
            extra=tuple((k, raw[k]) for k in _CARRIED if k in raw),
        )

    def _wire(self, rs: RecordSet) -> dict[str, Any]:
        wire: dict[str, Any] = {
            # Route 53 takes every name as absolute, with or without the trailing dot; we
            # send it without, which is also the form moto matches a DELETE against.
            "Name": self._in_zone(rs.name).rstrip("."),
            "Type": rs.rtype,
            "TTL": rs.ttl,
            "ResourceRecords": [{"Value": v} for v in rs.values],
        }
        if rs.weighted:
            wire["SetIdentifier"] = rs.set_id
            wire["Weight"] = rs.weight
        wire.update(dict(rs.extra))
        return wire

    def _change(self, changes: list[tuple[str, RecordSet]], what: str) -> ChangeId:
        batch = {
            "Comment": f"nxnw dns_handoff: {what}"[:256],
            "Changes": [{"Action": action, "ResourceRecordSet": self._wire(rs)} for action, rs in changes],
        }
        reply = self._call("change_resource_record_sets", what, HostedZoneId=self.hosted_zone_id, ChangeBatch=batch)
        return ChangeId(reply["ChangeInfo"]["Id"])

    def _call(self, operation: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            message = exc.response.get("Error", {}).get("Message", str(exc))
            error = RecordSetConflict if code == "InvalidChangeBatch" and _CONFLICT.search(message) else DnsError
            raise error(f"zone {self.zone if hasattr(self, 'zone') else '?'} (hosted zone {self.hosted_zone_id}): "
                        f"Route 53 refused to {what}: {code}: {message}") from exc
        except BotoCoreError as exc:
            raise DnsError(f"hosted zone {self.hosted_zone_id}: Route 53 did not answer ({what}): {exc}") from exc
