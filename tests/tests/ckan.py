"""The ckanapi side of tests/tests/opendata_api.rs: a portal harvesting a
node's open-data API with the real `ckanapi` client, TLS verified against
the federation root.

Arguments: the city node's base URL, the scooter operator's node's base
URL, the federation root certificate. Prints what the Rust test checks.
"""
import sys

import requests
from ckanapi import NotFound, RemoteCKAN, ValidationError

city_url, scooter_url, root = sys.argv[1:4]


def portal(url):
    session = requests.Session()
    session.verify = root
    # The API is read-only: GET only.
    return RemoteCKAN(url, get_only=True, session=session)


city = portal(city_url)
print("packages", ",".join(city.action.package_list()))
found = city.action.package_search(q="Stickstoffdioxid", fq="organization:stadt", rows=5, start=0)
print("search", found["count"], ",".join(p["name"] for p in found["results"]))
page = city.action.package_search(fq="res_format:CSV", rows=1, start=1)
print("page", page["count"], len(page["results"]))
air = city.action.package_show(id="air-quality")
print("show", air["name"], air["organization"]["name"], air["license_id"])
print("organizations", ",".join(city.action.organization_list()))
try:
    city.action.package_show(id="no-such-package")
    print("unknown found")
except NotFound as e:
    print("unknown NotFound")
try:
    city.action.package_search(fq="license_id:x")
    print("bad fq accepted")
except ValidationError:
    print("bad fq ValidationError")

# Downloads, as a portal follows the resource URLs.
csv_url = air["resources"][0]["url"]
r = requests.get(csv_url, verify=root, timeout=30)
r.raise_for_status()
lines = r.text.splitlines()
print("csv", r.headers["content-type"], len(lines) - 1, lines[0])

scooter = portal(scooter_url)
print("scooter packages", ",".join(scooter.action.package_list()))
release = scooter.action.package_show(id="scooter-trips-2025-03")
data = next(x for x in release["resources"] if x["name"] == "data.csv")
r = requests.get(data["url"], verify=root, timeout=30)
r.raise_for_status()
print("release", data["format"], data["size"], len(r.content), r.text.splitlines()[0])
raw = requests.get(scooter_url + "/download/dataset/scooter-trips.csv", verify=root, timeout=30)
print("raw", raw.status_code, raw.json()["error"]["__type"])
