"""Helpers for scripts/demo: create the demo tables, write versioned items in both regions, and show
convergence. Uses boto3 from the project virtualenv against AWS_ENDPOINT_URL (the local AWS).

Writes follow the item convention in docs/replicator.md: rep_version is a hybrid logical clock
(Unix ms x 1000 + counter), rep_origin the region that accepted the write, deletes are tombstones.
"""

import os
import sys
import time

import boto3

REGIONS = ("us-east-1", "us-west-2")


def client(region):
    return boto3.client("dynamodb", region_name=region, endpoint_url=os.environ["AWS_ENDPOINT_URL"])


class Clock:
    """Hybrid logical clock: monotonic, and ahead of any version it has seen."""

    def __init__(self):
        self.last = 0

    def after(self, seen=0):
        self.last = max(int(time.time() * 1000) * 1000, self.last + 1, seen + 1)
        return self.last


def create(table):
    for region in REGIONS:
        c = client(region)
        existing = c.list_tables()["TableNames"]
        if table in existing:
            c.delete_table(TableName=table)
        c.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        c.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "rep_expires"}
        )
        print(f"    {region}: table {table} created")


def write(c, table, region, clock, item_id, text, deleted=False):
    """Writes like the sample app: read the stored version, write a newer one conditionally."""
    for _ in range(5):
        got = c.get_item(TableName=table, Key={"id": {"S": item_id}}, ConsistentRead=True).get("Item")
        seen = int(got["rep_version"]["N"]) if got and "rep_version" in got else 0
        version = clock.after(seen)
        item = {
            "id": {"S": item_id},
            "text": {"S": text},
            "checked": {"BOOL": False},
            "rep_version": {"N": str(version)},
            "rep_origin": {"S": region},
        }
        if deleted:
            item["rep_deleted"] = {"BOOL": True}
            item["rep_expires"] = {"N": str(int(time.time()) + 7 * 86400)}
        try:
            c.put_item(
                TableName=table,
                Item=item,
                ConditionExpression="attribute_not_exists(rep_version) OR rep_version < :v",
                ExpressionAttributeValues={":v": {"N": str(version)}},
            )
            return version
        except c.exceptions.ConditionalCheckFailedException:
            continue
    raise SystemExit(f"could not write {item_id} in {region}")


def scan(c, table):
    items, kwargs = {}, {"TableName": table, "ConsistentRead": True}
    while True:
        out = c.scan(**kwargs)
        for item in out["Items"]:
            items[item["id"]["S"]] = item
        if not out.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]


def show(item):
    if item is None:
        return "-"
    state = "deleted (tombstone)" if item.get("rep_deleted", {}).get("BOOL") else item["text"]["S"]
    return f"{state}  v={item['rep_version']['N']} origin={item['rep_origin']['S']}"


def write_and_compare(table):
    east, west = client("us-east-1"), client("us-west-2")
    clock_east, clock_west = Clock(), Clock()
    count = 0
    for i in range(20):
        write(east, table, "us-east-1", clock_east, f"east-{i}", f"buy milk #{i}")
        write(west, table, "us-west-2", clock_west, f"west-{i}", f"walk the dog #{i}")
        count += 2
    # A conflict: both regions write the same item at nearly the same time; the higher version wins.
    write(east, table, "us-east-1", clock_east, "shared", "written in us-east-1")
    write(west, table, "us-west-2", clock_west, "shared", "written in us-west-2")
    # A delete in one region becomes a tombstone in both.
    write(east, table, "us-east-1", clock_east, "west-3", "", deleted=True)
    count += 3
    print(f"    wrote {count} items (20 in each region, one conflicting key, one delete)")
    start = time.time()
    while time.time() - start < 60:
        a, b = scan(east, table), scan(west, table)
        if a == b and len(a) == 41:
            break
        time.sleep(0.25)
    else:
        raise SystemExit(f"not converged after 60 s: {len(a)} items in us-east-1, {len(b)} in us-west-2")
    print(f"    converged after {time.time() - start:.1f} s: both regions hold the same {len(a)} items")
    print()
    print(f"    {'id':10} {'us-east-1':60} us-west-2")
    for key in ["east-0", "east-19", "west-0", "west-3", "shared"]:
        print(f"    {key:10} {show(a.get(key)):60} {show(b.get(key))}")


if __name__ == "__main__":
    command, table = sys.argv[1], sys.argv[2]
    {"create": create, "write-and-compare": write_and_compare}[command](table)
