# kdctest's Samba setup: creates accounts and exports keytabs in one Python
# process (samba-tool takes a process, about 0.3 s, per step). It does what
# samba-tool's user create, spn add, delegation for-any-protocol,
# delegation add-service, user sensitive, user disable and domain
# exportkeytab do (the flags go in "uac", ORed into userAccountControl), plus
# msDS-SupportedEncryptionTypes. Run with /usr/bin/python3 (the samba
# modules are Debian's). Reads a JSON spec on stdin:
#
#   {"smbconf": "/path/etc/smb.conf",
#    "accounts": [{"name": "svc_proxy", "password": "...", "uac": 16777216,
#                  "spns": ["HTTP/proxy..."], "delegate_to": ["HTTP/..."],
#                  "enctypes": 24}],
#    "keytabs": [{"principal": "svc_proxy", "path": "/path/proxy.keytab"}]}
#
# and writes, as its last line on stdout, the objectSid of each account it
# created: {"sids": {"svc_proxy": "S-1-5-21-...-1103", ...}}.
import json
import sys

import ldb
from samba import enable_net_export_keytab
from samba.auth import system_session
from samba.credentials import Credentials
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB

spec = json.load(sys.stdin)
lp = LoadParm()
lp.load(spec["smbconf"])
sam = SamDB(lp.samdb_url(), session_info=system_session(), lp=lp)

sids = {}
for a in spec.get("accounts") or []:
    # The UPN is name@<dns domain>, as with samba-tool user create.
    sam.newuser(a["name"], a["password"])
    res = sam.search(base=sam.domain_dn(), scope=ldb.SCOPE_SUBTREE,
                     expression="(sAMAccountName=%s)" % ldb.binary_encode(a["name"]),
                     attrs=["userAccountControl", "objectSid"])
    sids[a["name"]] = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))
    m = ldb.Message(res[0].dn)
    if a.get("uac"):
        uac = int(res[0]["userAccountControl"][0]) | a["uac"]
        m["userAccountControl"] = ldb.MessageElement(
            str(uac), ldb.FLAG_MOD_REPLACE, "userAccountControl")
    if a.get("spns"):
        m["servicePrincipalName"] = ldb.MessageElement(
            a["spns"], ldb.FLAG_MOD_ADD, "servicePrincipalName")
    if a.get("delegate_to"):
        m["msDS-AllowedToDelegateTo"] = ldb.MessageElement(
            a["delegate_to"], ldb.FLAG_MOD_ADD, "msDS-AllowedToDelegateTo")
    if a.get("enctypes"):
        m["msDS-SupportedEncryptionTypes"] = ldb.MessageElement(
            str(a["enctypes"]), ldb.FLAG_MOD_REPLACE, "msDS-SupportedEncryptionTypes")
    if len(m) > 0:
        sam.modify(m)

if spec.get("keytabs"):
    enable_net_export_keytab()
    from samba.net import Net

    net = Net(Credentials(), lp)
    for k in spec["keytabs"]:
        net.export_keytab(keytab=k["path"], principal=k["principal"])

sys.stdout.write("\n" + json.dumps({"sids": sids}) + "\n")
