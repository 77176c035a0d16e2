#!/usr/bin/python3
"""An emulated BlueZ for tests: owns `org.bluez` on a private D-Bus and serves emulated BLE bands.

btleplug (through bluez-async and libdbus) talks to it exactly as it talks to bluetoothd, so
the bridge's real scan / connect / discover / read / subscribe / notify / disconnect path runs
with no Bluetooth hardware. Tests script the bands through `org.phr.Emulator` on
`/org/phr/emulator` (see README.md next to this file).

Usage: emulator.py CONFIG.json [--address ADDR] [--verbose] [--exit-on-stdin-eof]
                                [--kill-on-exit PID]

The bus is ADDR, else $DBUS_SYSTEM_BUS_ADDRESS. `org.bluez` is requested last, so once it has
an owner every object is exported and the control interface answers.

Needs Debian's /usr/bin/python3 with python3-dbus and python3-gi.
"""

import argparse
import datetime
import json
import os
import signal
import sys
from xml.sax.saxutils import quoteattr

import dbus
import dbus.mainloop.glib
import dbus.service
from _dbus_bindings import DBUS_INTROSPECT_1_0_XML_DOCTYPE_DECL_NODE
from gi.repository import GLib

BLUEZ = "org.bluez"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"
CONTROL_IFACE = "org.phr.Emulator"
CONTROL_PATH = "/org/phr/emulator"
ADAPTER_PATH = "/org/bluez/hci0"

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
VENDOR_SERVICE = "7e4a0000-5048-5200-8000-00805f9b34fb"
VENDOR_ACTIVITY = "7e4a0001-5048-5200-8000-00805f9b34fb"
VENDOR_SLEEP = "7e4a0002-5048-5200-8000-00805f9b34fb"
VENDOR_HISTORY = "7e4a0003-5048-5200-8000-00805f9b34fb"
VENDOR_STEPS_TODAY = "7e4a0004-5048-5200-8000-00805f9b34fb"
CCCD = "00002902" + BASE_UUID_SUFFIX
# Current Time Service (CTS 1.1): one primary service with Current Time (mandatory: read,
# notify) and, optionally, Local Time Information (read).
CURRENT_TIME_SERVICE = "00001805" + BASE_UUID_SUFFIX
CURRENT_TIME = "00002a2b" + BASE_UUID_SUFFIX
LOCAL_TIME_INFORMATION = "00002a0f" + BASE_UUID_SUFFIX

VERBOSE = False


def log(msg):
    if VERBOSE:
        print("bluez-emulator: " + msg, file=sys.stderr, flush=True)


def full_uuid(u):
    """'2a37', '0x2A37', '00002a37' or a full UUID -> the full lower-case UUID."""
    u = str(u).strip().lower()
    if u.startswith("0x"):
        u = u[2:]
    if len(u) == 4:
        return "0000" + u + BASE_UUID_SUFFIX
    if len(u) == 8:
        return u + BASE_UUID_SUFFIX
    if len(u) == 36:
        return u
    raise ValueError("not a UUID: %r" % u)


def norm_address(a):
    a = str(a).strip().upper()
    parts = a.split(":")
    if len(parts) != 6 or any(len(p) != 2 for p in parts):
        raise ValueError("not a Bluetooth address: %r" % a)
    int(a.replace(":", ""), 16)
    return a


def byte_array(value):
    return dbus.Array([dbus.Byte(b) for b in bytes(value)], signature="y")


def failed(msg, name="org.bluez.Error.Failed"):
    return dbus.exceptions.DBusException(msg, name=name)


def local_offset_minutes(local_time):
    """Local Time Information bytes (s8 time zone in 15-minute steps, u8 DST code) -> minutes
    east of UTC; unknown or malformed parts count as 0, as a band without a zone shows UTC."""
    if len(local_time) != 2:
        return 0
    zone = local_time[0] - 256 if local_time[0] > 127 else local_time[0]
    dst = {0: 0, 2: 30, 4: 60, 8: 120}.get(local_time[1], 0)
    return (0 if zone == -128 else zone * 15) + dst


def current_time_value(local_time):
    """The Current Time characteristic (Exact Time 256 + Adjust Reason, 10 bytes) of a band
    whose clock is the emulator's UTC clock shifted by its Local Time Information."""
    now = (datetime.datetime.now(datetime.timezone.utc)
           + datetime.timedelta(minutes=local_offset_minutes(local_time)))
    return (now.year.to_bytes(2, "little")
            + bytes([now.month, now.day, now.hour, now.minute, now.second, now.isoweekday(),
                     now.microsecond * 256 // 1000000, 0]))


def default_services(band):
    """Standard Heart Rate, Battery, Device Information, Physical Activity Monitor, plus the
    project's vendor service; and the Current Time Service for a band given `local_time`."""
    # Activity Current Session is readable once the band has a session to describe.
    session = band.get("pams_current_session")
    session_char = ({"uuid": "2b44", "flags": ["read", "notify"], "value": session} if session
                    else {"uuid": "2b44", "flags": ["notify"], "value": []})
    return [
        {"uuid": "180a", "characteristics": [
            {"uuid": "2a29", "flags": ["read"], "value": list(band.get("manufacturer", "PHR Labs").encode())},
            {"uuid": "2a25", "flags": ["read"], "value": list(band.get("serial", "SN-0000").encode())},
        ]},
        {"uuid": "180f", "characteristics": [
            {"uuid": "2a19", "flags": ["read", "notify"], "value": [int(band.get("battery", 100))]},
        ]},
        {"uuid": "180d", "characteristics": [
            {"uuid": "2a37", "flags": ["notify"], "value": []},
        ]},
        {"uuid": "183e", "characteristics": [
            {"uuid": "2b40", "flags": ["indicate"], "value": []},  # Step Counter Activity Summary
            {"uuid": "2b42", "flags": ["indicate"], "value": []},  # Sleep Activity Summary
            {"uuid": "2b43", "flags": ["write", "indicate"], "value": []},  # Control Point
            session_char,
            {"uuid": "2b45", "flags": ["indicate"], "value": []},  # Session Descriptor
        ]},
        {"uuid": VENDOR_SERVICE, "characteristics": [
            {"uuid": VENDOR_ACTIVITY, "flags": ["notify"], "value": []},
            {"uuid": VENDOR_SLEEP, "flags": ["notify"], "value": []},
            # History request: the test, playing the band's firmware, answers it.
            {"uuid": VENDOR_HISTORY, "flags": ["write"], "value": []},
            # Steps today: a running daily total.
            {"uuid": VENDOR_STEPS_TODAY, "flags": ["read", "notify"],
             "value": list(int(band.get("steps_today", 0)).to_bytes(4, "little"))},
        ]},
    ] + current_time_service(band)


def current_time_service(band):
    """A band with `local_time` (Local Time Information bytes, a list or hex) serves the
    Current Time Service: Current Time (read, notify; read answers the band's local clock
    unless a test set a value) and Local Time Information (read). Bands without it have no
    CTS, as most consumer bands."""
    lti = band.get("local_time")
    if lti is None:
        return []
    lti = bytes.fromhex(lti) if isinstance(lti, str) else bytes(lti)
    return [{"uuid": "1805", "characteristics": [
        {"uuid": "2a2b", "flags": ["read", "notify"], "value": [],
         "dynamic": "current_time"},
        {"uuid": "2a0f", "flags": ["read"], "value": list(lti)},
    ]}]


# Methods each BlueZ interface offers, for Introspect: (name, [(arg, type, direction)]).
METHODS = {
    ADAPTER_IFACE: [
        ("StartDiscovery", []), ("StopDiscovery", []),
        ("SetDiscoveryFilter", [("properties", "a{sv}", "in")]),
        ("RemoveDevice", [("device", "o", "in")]),
        ("GetDiscoveryFilters", [("filters", "as", "out")]),
    ],
    DEVICE_IFACE: [
        ("Connect", []), ("Disconnect", []), ("Pair", []), ("CancelPairing", []),
        ("ConnectProfile", [("UUID", "s", "in")]), ("DisconnectProfile", [("UUID", "s", "in")]),
    ],
    SERVICE_IFACE: [],
    CHAR_IFACE: [
        ("ReadValue", [("options", "a{sv}", "in"), ("value", "ay", "out")]),
        ("WriteValue", [("value", "ay", "in"), ("options", "a{sv}", "in")]),
        ("StartNotify", []), ("StopNotify", []),
    ],
    DESC_IFACE: [
        ("ReadValue", [("options", "a{sv}", "in"), ("value", "ay", "out")]),
        ("WriteValue", [("value", "ay", "in"), ("options", "a{sv}", "in")]),
    ],
}

WRITABLE = {
    ADAPTER_IFACE: {"Powered": dbus.Boolean, "Alias": dbus.String, "Discoverable": dbus.Boolean,
                    "Pairable": dbus.Boolean},
    DEVICE_IFACE: {"Trusted": dbus.Boolean, "Blocked": dbus.Boolean, "Alias": dbus.String},
}


def dbus_type_of(v):
    if isinstance(v, dbus.Boolean):
        return "b"
    if isinstance(v, dbus.Int16):
        return "n"
    if isinstance(v, dbus.UInt16):
        return "q"
    if isinstance(v, dbus.UInt32):
        return "u"
    if isinstance(v, dbus.ObjectPath):
        return "o"
    if isinstance(v, dbus.Array):
        return "a" + v.signature
    if isinstance(v, dbus.Dictionary):
        return "a{" + v.signature + "}"
    return "s"


class PropObject(dbus.service.Object):
    """An exported object with BlueZ-style properties and an Introspect that lists them.

    Every <interface> is emitted before the child <node>s: bluez-async parses Introspect with
    serde-xml-rs, which fails ("duplicate field") when they are interleaved.
    """

    def __init__(self, bus, path, interfaces):
        self.path = path
        self.props = interfaces  # {interface: {name: dbus value}}
        dbus.service.Object.__init__(self, bus, path)

    def managed(self):
        return dbus.Dictionary(
            {i: dbus.Dictionary(p, signature="sv") for i, p in self.props.items()},
            signature="sa{sv}")

    def set_props(self, iface, **changes):
        changed = {}
        for k, v in changes.items():
            if self.props[iface].get(k) != v or k == "Value":
                self.props[iface][k] = v
                changed[k] = v
        if changed:
            self.PropertiesChanged(iface, dbus.Dictionary(changed, signature="sv"),
                                   dbus.Array([], signature="s"))

    @dbus.service.method(PROPS_IFACE, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        try:
            return self.props[iface][name]
        except KeyError:
            raise failed("No such property '%s.%s'" % (iface, name),
                         "org.freedesktop.DBus.Error.InvalidArgs")

    @dbus.service.method(PROPS_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        if iface not in self.props:
            raise failed("No such interface '%s'" % iface, "org.freedesktop.DBus.Error.InvalidArgs")
        return dbus.Dictionary(self.props[iface], signature="sv")

    @dbus.service.method(PROPS_IFACE, in_signature="ssv")
    def Set(self, iface, name, value):
        if iface not in self.props or name not in self.props[iface]:
            raise failed("No such property '%s'" % name, "org.freedesktop.DBus.Error.InvalidArgs")
        kind = WRITABLE.get(iface, {}).get(name)
        if kind is None:
            raise failed("Property '%s' is not writable" % name,
                         "org.freedesktop.DBus.Error.PropertyReadOnly")
        log("Set %s %s.%s = %r" % (self.path, iface, name, value))
        self.on_set(iface, name, kind(value))

    def on_set(self, iface, name, value):
        self.set_props(iface, **{name: value})

    @dbus.service.signal(PROPS_IFACE, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass

    @dbus.service.method(INTROSPECT_IFACE, in_signature="", out_signature="s",
                         path_keyword="object_path", connection_keyword="connection")
    def Introspect(self, object_path, connection):
        xml = [DBUS_INTROSPECT_1_0_XML_DOCTYPE_DECL_NODE,
               "<node name=%s>" % quoteattr(object_path)]
        xml.append('  <interface name="%s">\n    <method name="Introspect">'
                   '<arg name="xml" type="s" direction="out"/></method>\n  </interface>'
                   % INTROSPECT_IFACE)
        xml.append('  <interface name="%s">\n'
                   '    <method name="Get"><arg name="interface" type="s" direction="in"/>'
                   '<arg name="name" type="s" direction="in"/>'
                   '<arg name="value" type="v" direction="out"/></method>\n'
                   '    <method name="Set"><arg name="interface" type="s" direction="in"/>'
                   '<arg name="name" type="s" direction="in"/>'
                   '<arg name="value" type="v" direction="in"/></method>\n'
                   '    <method name="GetAll"><arg name="interface" type="s" direction="in"/>'
                   '<arg name="properties" type="a{sv}" direction="out"/></method>\n'
                   '    <signal name="PropertiesChanged"><arg name="interface" type="s"/>'
                   '<arg name="changed_properties" type="a{sv}"/>'
                   '<arg name="invalidated_properties" type="as"/></signal>\n'
                   '  </interface>' % PROPS_IFACE)
        for iface, props in self.props.items():
            xml.append('  <interface name="%s">' % iface)
            for name, args in METHODS.get(iface, []):
                xml.append('    <method name="%s">%s</method>' % (name, "".join(
                    '<arg name="%s" type="%s" direction="%s"/>' % a for a in args)))
            writable = WRITABLE.get(iface, {})
            for name, value in props.items():
                xml.append('    <property name="%s" type="%s" access="%s"/>' % (
                    name, dbus_type_of(value), "readwrite" if name in writable else "read"))
            xml.append("  </interface>")
        xml.extend(self.extra_interfaces_xml())
        # Child nodes strictly after every interface.
        for name in connection.list_exported_child_objects(object_path):
            xml.append('  <node name="%s"/>' % name)
        xml.append("</node>")
        return "\n".join(xml) + "\n"

    def extra_interfaces_xml(self):
        return []


class Root(dbus.service.Object):
    """`/`: the ObjectManager bluez-async asks for adapters and devices."""

    def __init__(self, bus, emu):
        self.emu = emu
        dbus.service.Object.__init__(self, bus, "/")

    @dbus.service.method(OM_IFACE, in_signature="", out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        return dbus.Dictionary({o.path: o.managed() for o in self.emu.objects()},
                               signature="oa{sa{sv}}")

    @dbus.service.signal(OM_IFACE, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, interfaces):
        pass

    @dbus.service.signal(OM_IFACE, signature="oas")
    def InterfacesRemoved(self, path, interfaces):
        pass


class Adapter(PropObject):
    def __init__(self, bus, emu, cfg):
        self.emu = emu
        self.discovery_clients = set()
        self.filters = {}
        name = cfg.get("name", "phr-emulated")
        PropObject.__init__(self, bus, ADAPTER_PATH, {ADAPTER_IFACE: {
            "Address": dbus.String(norm_address(cfg.get("address", "00:1A:7D:DA:71:13"))),
            "AddressType": dbus.String("public"),
            "Name": dbus.String(name),
            "Alias": dbus.String(name),
            "Class": dbus.UInt32(0x7C010C),
            "Powered": dbus.Boolean(bool(cfg.get("powered", True))),
            "PowerState": dbus.String("on" if cfg.get("powered", True) else "off"),
            "Discoverable": dbus.Boolean(False),
            "DiscoverableTimeout": dbus.UInt32(180),
            "Pairable": dbus.Boolean(True),
            "PairableTimeout": dbus.UInt32(0),
            "Discovering": dbus.Boolean(False),
            "UUIDs": dbus.Array([], signature="s"),
            "Modalias": dbus.String(cfg.get("modalias", "usb:v1D6Bp0246d0537")),
            "Roles": dbus.Array(["central", "peripheral"], signature="s"),
        }})

    def on_set(self, iface, name, value):
        if name == "Powered":
            self.set_props(iface, Powered=value, PowerState=dbus.String("on" if value else "off"))
            if not value:
                self.discovery_clients.clear()
                self.set_props(iface, Discovering=dbus.Boolean(False))
                for band in self.emu.bands.values():
                    band.drop_connection()
            return
        PropObject.on_set(self, iface, name, value)

    def powered(self):
        return bool(self.props[ADAPTER_IFACE]["Powered"])

    def discovering(self):
        return bool(self.props[ADAPTER_IFACE]["Discovering"])

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender=None):
        if not self.powered():
            raise failed("Resource Not Ready", "org.bluez.Error.NotReady")
        log("StartDiscovery from %s" % sender)
        self.discovery_clients.add(sender)
        if not self.discovering():
            self.set_props(ADAPTER_IFACE, Discovering=dbus.Boolean(True))
        self.emu.on_discovery_started()

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender=None):
        if not self.powered():
            raise failed("Resource Not Ready", "org.bluez.Error.NotReady")
        if sender not in self.discovery_clients:
            raise failed("No discovery started")
        log("StopDiscovery from %s" % sender)
        self.discovery_clients.discard(sender)
        self.filters.pop(sender, None)
        if not self.discovery_clients:
            self.set_props(ADAPTER_IFACE, Discovering=dbus.Boolean(False))

    def client_vanished(self, name):
        if name in self.discovery_clients:
            self.discovery_clients.discard(name)
            if not self.discovery_clients:
                self.set_props(ADAPTER_IFACE, Discovering=dbus.Boolean(False))

    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}", out_signature="",
                         sender_keyword="sender")
    def SetDiscoveryFilter(self, properties, sender=None):
        known = {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable",
                 "Pattern"}
        for k in properties:
            if k not in known:
                raise failed("Invalid arguments in method call", "org.bluez.Error.InvalidArguments")
        log("SetDiscoveryFilter from %s: %s" % (sender, dict(properties)))
        self.filters[sender] = dict(properties)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="as")
    def GetDiscoveryFilters(self):
        return dbus.Array(["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData",
                           "Discoverable", "Pattern"], signature="s")

    @dbus.service.method(ADAPTER_IFACE, in_signature="o", out_signature="")
    def RemoveDevice(self, device):
        band = self.emu.band_by_path(str(device))
        if band is None or band.device is None:
            raise failed("Device does not exist", "org.bluez.Error.DoesNotExist")
        log("RemoveDevice %s" % device)
        band.unexport()


class Device(PropObject):
    def __init__(self, bus, band):
        self.band = band
        cfg = band.cfg
        props = {
            "Address": dbus.String(band.address),
            "AddressType": dbus.String(cfg.get("address_type", "public")),
            "Name": dbus.String(cfg["name"]),
            "Alias": dbus.String(cfg["name"]),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "RSSI": dbus.Int16(band.rssi),
            "UUIDs": dbus.Array(band.advertised_uuids, signature="s"),
            "Adapter": dbus.ObjectPath(ADAPTER_PATH),
        }
        if cfg.get("tx_power") is not None:
            props["TxPower"] = dbus.Int16(int(cfg["tx_power"]))
        if cfg.get("appearance") is not None:
            props["Appearance"] = dbus.UInt16(int(cfg["appearance"]))
        if cfg.get("manufacturer_data"):
            props["ManufacturerData"] = dbus.Dictionary(
                {dbus.UInt16(int(k, 0)): byte_array(bytes.fromhex(v))
                 for k, v in cfg["manufacturer_data"].items()}, signature="qv")
        PropObject.__init__(self, bus, band.path, {DEVICE_IFACE: props})

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="",
                         async_callbacks=("reply", "error"))
    def Connect(self, reply, error):
        self.band.connect(reply, error)

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def Disconnect(self):
        self.band.disconnect("Disconnect()")

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def Pair(self):
        self.set_props(DEVICE_IFACE, Paired=dbus.Boolean(True), Bonded=dbus.Boolean(True))

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def CancelPairing(self):
        raise failed("Does Not Exist", "org.bluez.Error.DoesNotExist")

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def ConnectProfile(self, uuid):
        raise failed("Not Supported", "org.bluez.Error.NotSupported")

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def DisconnectProfile(self, uuid):
        raise failed("Not Supported", "org.bluez.Error.NotSupported")


class GattService(PropObject):
    def __init__(self, bus, path, uuid, device_path):
        PropObject.__init__(self, bus, path, {SERVICE_IFACE: {
            "UUID": dbus.String(uuid),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(device_path),
            "Includes": dbus.Array([], signature="o"),
        }})


class GattCharacteristic(PropObject):
    def __init__(self, bus, path, band, char, service_path):
        self.band = band
        self.char = char  # the band's Char record (value, flags, notify clients)
        PropObject.__init__(self, bus, path, {CHAR_IFACE: {
            "UUID": dbus.String(char.uuid),
            "Service": dbus.ObjectPath(service_path),
            "Value": byte_array(char.value),
            "Flags": dbus.Array(char.flags, signature="s"),
            "Notifying": dbus.Boolean(False),
            "MTU": dbus.UInt16(247),
        }})

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        if "read" not in self.char.flags:
            raise failed("Read not permitted", "org.bluez.Error.NotPermitted")
        offset = int(options.get("offset", 0))
        value = self.char.read()
        self.band.reads += 1
        log("ReadValue %s %s -> %s" % (self.band.address, self.char.uuid, value.hex()))
        # BlueZ caches the value it read and announces it: btleplug sees it as a notification.
        if self.band.emu.value_changed_on_read:
            self.set_props(CHAR_IFACE, Value=byte_array(value))
        if offset > len(value):
            raise failed("Invalid offset", "org.bluez.Error.InvalidOffset")
        return byte_array(value[offset:])

    @dbus.service.method(CHAR_IFACE, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        flags = self.char.flags
        if not ({"write", "write-without-response", "reliable-write"} & set(flags)):
            raise failed("Write not permitted", "org.bluez.Error.NotPermitted")
        self.band.emu.writes.append((self.band.address, self.char.uuid, bytes(value)))
        self.char.set(value)

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartNotify(self, sender=None):
        if not ({"notify", "indicate"} & set(self.char.flags)):
            raise failed("Operation is not supported", "org.bluez.Error.NotSupported")
        if sender in self.char.notify_clients:
            raise failed("In Progress", "org.bluez.Error.InProgress")
        log("StartNotify %s %s from %s" % (self.band.address, self.char.uuid, sender))
        self.char.notify_clients.add(sender)
        self.set_props(CHAR_IFACE, Notifying=dbus.Boolean(True))

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopNotify(self, sender=None):
        if sender not in self.char.notify_clients:
            raise failed("No notify session started")
        log("StopNotify %s %s from %s" % (self.band.address, self.char.uuid, sender))
        self.char.notify_clients.discard(sender)
        if not self.char.notify_clients:
            self.set_props(CHAR_IFACE, Notifying=dbus.Boolean(False))

    def client_vanished(self, name):
        if name in self.char.notify_clients:
            self.char.notify_clients.discard(name)
            if not self.char.notify_clients:
                self.set_props(CHAR_IFACE, Notifying=dbus.Boolean(False))


class GattDescriptor(PropObject):
    def __init__(self, bus, path, uuid, char_path):
        PropObject.__init__(self, bus, path, {DESC_IFACE: {
            "UUID": dbus.String(uuid),
            "Characteristic": dbus.ObjectPath(char_path),
            "Value": byte_array(b""),
            "Flags": dbus.Array(["read", "write"], signature="s"),
        }})

    @dbus.service.method(DESC_IFACE, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        return self.props[DESC_IFACE]["Value"]

    @dbus.service.method(DESC_IFACE, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        # BlueZ refuses CCCD writes from clients; StartNotify is the way.
        raise failed("Not Permitted", "org.bluez.Error.NotPermitted")


class Char:
    def __init__(self, uuid, flags, value, dynamic=None):
        self.uuid = uuid
        self.flags = list(flags)
        self.value = bytes(value)
        # A value computed at each read (Current Time) until a test sets one.
        self.dynamic = dynamic
        self.notify_clients = set()
        self.obj = None

    def set(self, value):
        self.value = bytes(value)
        self.dynamic = None

    def read(self):
        if self.dynamic is not None:
            return bytes(self.dynamic())
        return bytes(self.value)


class Band:
    """One emulated wearable: its configuration, GATT database and D-Bus objects (if exported)."""

    def __init__(self, emu, cfg):
        self.emu = emu
        self.cfg = cfg
        self.address = norm_address(cfg["address"])
        self.path = ADAPTER_PATH + "/dev_" + self.address.replace(":", "_")
        self.rssi = int(cfg.get("rssi", -60))
        self.present = bool(cfg.get("present", True))
        self.services = []  # [(uuid, [Char])]
        for s in cfg.get("services") or default_services(cfg):
            chars = [Char(full_uuid(c["uuid"]), c.get("flags", ["read"]),
                          bytes(c.get("value", [])) if not isinstance(c.get("value"), str)
                          else bytes.fromhex(c["value"]),
                          self.dynamic_value(c.get("dynamic")))
                     for c in s["characteristics"]]
            self.services.append((full_uuid(s["uuid"]), chars))
        adv = cfg.get("advertised_uuids")
        self.advertised_uuids = ([full_uuid(u) for u in adv] if adv is not None
                                 else [u for u, _ in self.services])
        self.device = None  # Device object while known to the adapter
        self.gatt = []  # exported GATT objects while connected, parents first
        self.resolve_source = None
        self.connects = 0
        self.disconnects = 0
        self.reads = 0

    def dynamic_value(self, kind):
        if kind is None:
            return None
        if kind == "current_time":
            # The band's clock follows whatever Local Time Information it serves now.
            return lambda: current_time_value(self.char(LOCAL_TIME_INFORMATION).value)
        raise ValueError("unknown dynamic value %r" % kind)

    def char(self, uuid):
        uuid = full_uuid(uuid)
        for _, chars in self.services:
            for c in chars:
                if c.uuid == uuid:
                    return c
        raise failed("band %s has no characteristic %s" % (self.address, uuid),
                     "org.phr.Emulator.Error.NoSuchCharacteristic")

    def connected(self):
        return self.device is not None and bool(self.device.props[DEVICE_IFACE]["Connected"])

    def export(self):
        if self.device is not None or not self.present:
            return
        log("discovered %s" % self.address)
        self.device = Device(self.emu.bus, self)
        self.emu.root.InterfacesAdded(self.path, self.device.managed())
        self.emu.signal_rssi(self)

    def unexport(self):
        if self.device is None:
            return
        self.drop_connection()
        log("removed %s" % self.address)
        self.device.remove_from_connection()
        self.device = None
        self.emu.root.InterfacesRemoved(self.path, dbus.Array([DEVICE_IFACE], signature="s"))

    def connect(self, reply, error):
        if self.device is None or not self.present:
            error(failed("le-connection-abort-by-local"))
            return
        if not self.emu.adapter.powered():
            error(failed("Resource Not Ready", "org.bluez.Error.NotReady"))
            return
        if self.connected():
            reply()
            return
        if self.emu.connect_failures.get(self.address, 0) > 0:
            self.emu.connect_failures[self.address] -= 1
            log("Connect %s: scripted failure" % self.address)
            error(failed("le-connection-abort-by-local"))
            return
        log("Connect %s" % self.address)
        self.connects += 1
        self.device.set_props(DEVICE_IFACE, Connected=dbus.Boolean(True))
        self.export_gatt()
        reply()
        # bluetoothd answers Connect first and resolves services afterwards.
        self.resolve_source = GLib.timeout_add(self.emu.resolve_delay_ms, self.resolved)

    def resolved(self):
        self.resolve_source = None
        if self.connected():
            self.device.set_props(DEVICE_IFACE, ServicesResolved=dbus.Boolean(True))
        return False

    def export_gatt(self):
        bus = self.emu.bus
        handle = 0x000A
        for s_uuid, chars in self.services:
            s_path = "%s/service%04x" % (self.path, handle)
            handle += 1
            svc = GattService(bus, s_path, s_uuid, self.path)
            self.gatt.append(svc)
            self.emu.root.InterfacesAdded(s_path, svc.managed())
            for c in chars:
                c_path = "%s/char%04x" % (s_path, handle)
                handle += 2
                c.obj = GattCharacteristic(bus, c_path, self, c, s_path)
                self.gatt.append(c.obj)
                self.emu.root.InterfacesAdded(c_path, c.obj.managed())
                if {"notify", "indicate"} & set(c.flags):
                    d_path = "%s/desc%04x" % (c_path, handle)
                    handle += 1
                    desc = GattDescriptor(bus, d_path, CCCD, c_path)
                    self.gatt.append(desc)
                    self.emu.root.InterfacesAdded(d_path, desc.managed())

    def drop_connection(self):
        """The link is gone (Disconnect(), out of range, adapter off): tear down GATT."""
        if not self.connected():
            return
        log("disconnected %s" % self.address)
        self.disconnects += 1
        if self.resolve_source is not None:
            GLib.source_remove(self.resolve_source)
            self.resolve_source = None
        self.device.set_props(DEVICE_IFACE, ServicesResolved=dbus.Boolean(False))
        for _, chars in self.services:
            for c in chars:
                c.notify_clients.clear()
                c.obj = None
        for obj in reversed(self.gatt):
            obj.remove_from_connection()
            self.emu.root.InterfacesRemoved(obj.path, dbus.Array(list(obj.props), signature="s"))
        self.gatt = []
        self.device.set_props(DEVICE_IFACE, Connected=dbus.Boolean(False))

    def disconnect(self, why):
        log("%s %s" % (why, self.address))
        if not self.connected():
            raise failed("Not Connected", "org.bluez.Error.NotConnected")
        self.drop_connection()

    def status(self):
        return {
            "address": self.address,
            "path": self.path,
            "present": self.present,
            "discovered": self.device is not None,
            "connected": self.connected(),
            "services_resolved": self.device is not None
            and bool(self.device.props[DEVICE_IFACE]["ServicesResolved"]),
            "notifying": sorted(c.uuid for _, cs in self.services for c in cs if c.notify_clients),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "reads": self.reads,
            "rssi": self.rssi,
        }


class Control(dbus.service.Object):
    """`org.phr.Emulator`: how a test scripts the bands."""

    def __init__(self, bus, emu):
        self.emu = emu
        dbus.service.Object.__init__(self, bus, CONTROL_PATH)

    def band(self, address):
        try:
            return self.emu.bands[norm_address(address)]
        except (KeyError, ValueError):
            raise failed("no emulated band %s" % address, "org.phr.Emulator.Error.NoSuchBand")

    @dbus.service.method(CONTROL_IFACE, in_signature="ssay", out_signature="b")
    def Notify(self, address, uuid, value):
        """Sets the value and notifies it if a client subscribed; returns whether it was sent."""
        band = self.band(address)
        c = band.char(uuid)
        c.set(value)
        if not (band.connected() and c.notify_clients and c.obj is not None):
            log("Notify %s %s dropped: not subscribed" % (band.address, c.uuid))
            return False
        c.obj.set_props(CHAR_IFACE, Value=byte_array(c.value))
        self.emu.sent.append((band.address, c.uuid, c.value))
        log("Notify %s %s %s" % (band.address, c.uuid, c.value.hex()))
        return True

    @dbus.service.method(CONTROL_IFACE, in_signature="ssay", out_signature="")
    def SetReadValue(self, address, uuid, value):
        self.band(address).char(uuid).set(value)

    @dbus.service.method(CONTROL_IFACE, in_signature="sb", out_signature="")
    def SetPresent(self, address, present):
        band = self.band(address)
        band.present = bool(present)
        log("SetPresent %s %s" % (band.address, band.present))
        if band.present:
            if self.emu.adapter.discovering():
                band.export()
        else:
            band.unexport()

    @dbus.service.method(CONTROL_IFACE, in_signature="sn", out_signature="")
    def SetRssi(self, address, rssi):
        band = self.band(address)
        band.rssi = int(rssi)
        self.emu.signal_rssi(band)

    @dbus.service.method(CONTROL_IFACE, in_signature="su", out_signature="")
    def FailConnects(self, address, count):
        """The next `count` Connect() calls to this band fail as an out-of-range band's would."""
        self.emu.connect_failures[self.band(address).address] = int(count)

    @dbus.service.method(CONTROL_IFACE, in_signature="s", out_signature="")
    def Disconnect(self, address):
        """The band drops the link by itself (Connected=false); it stays discoverable."""
        band = self.band(address)
        if band.connected():
            band.drop_connection()

    @dbus.service.method(CONTROL_IFACE, in_signature="", out_signature="a(ssay)")
    def Sent(self):
        return dbus.Array([dbus.Struct((a, u, byte_array(v)), signature="ssay")
                           for a, u, v in self.emu.sent], signature="(ssay)")

    @dbus.service.method(CONTROL_IFACE, in_signature="", out_signature="s")
    def SentJson(self):
        return json.dumps([{"address": a, "uuid": u, "value": v.hex()}
                           for a, u, v in self.emu.sent], separators=(",", ":"))

    @dbus.service.method(CONTROL_IFACE, in_signature="", out_signature="")
    def ClearSent(self):
        self.emu.sent = []

    @dbus.service.method(CONTROL_IFACE, in_signature="", out_signature="s")
    def Status(self):
        return json.dumps({
            "powered": self.emu.adapter.powered(),
            "discovering": self.emu.adapter.discovering(),
            "bands": [b.status() for b in self.emu.bands.values()],
            "writes": [{"address": a, "uuid": u, "value": v.hex()}
                       for a, u, v in self.emu.writes],
        }, separators=(",", ":"))

    @dbus.service.method(CONTROL_IFACE, in_signature="", out_signature="")
    def Quit(self):
        GLib.idle_add(self.emu.loop.quit)


class Emulator:
    def __init__(self, bus, config, loop):
        self.bus = bus
        self.loop = loop
        self.sent = []
        self.writes = []
        self.connect_failures = {}
        self.value_changed_on_read = bool(config.get("value_changed_on_read", True))
        self.resolve_delay_ms = int(config.get("resolve_delay_ms", 20))
        self.rssi_interval_ms = int(config.get("rssi_interval_ms", 1000))
        self.root = Root(bus, self)
        self.adapter = Adapter(bus, self, config.get("adapter", {}))
        self.bands = {}
        for b in config.get("bands", []):
            band = Band(self, b)
            if band.address in self.bands:
                raise ValueError("duplicate band address %s" % band.address)
            self.bands[band.address] = band
        self.control = Control(bus, self)
        bus.add_signal_receiver(self.name_owner_changed, "NameOwnerChanged",
                                "org.freedesktop.DBus", "org.freedesktop.DBus",
                                "/org/freedesktop/DBus")
        if self.rssi_interval_ms > 0:
            GLib.timeout_add(self.rssi_interval_ms, self.rssi_tick)

    def objects(self):
        out = [self.adapter]
        for b in self.bands.values():
            if b.device is not None:
                out.append(b.device)
                out.extend(b.gatt)
        return out

    def band_by_path(self, path):
        for b in self.bands.values():
            if b.path == path:
                return b
        return None

    def on_discovery_started(self):
        for b in self.bands.values():
            b.export()

    def signal_rssi(self, band):
        if band.device is not None:
            band.device.props[DEVICE_IFACE]["RSSI"] = dbus.Int16(band.rssi)
            band.device.PropertiesChanged(
                DEVICE_IFACE, dbus.Dictionary({"RSSI": dbus.Int16(band.rssi)}, signature="sv"),
                dbus.Array([], signature="s"))

    def rssi_tick(self):
        if self.adapter.discovering():
            for b in self.bands.values():
                if b.device is not None and not b.connected():
                    self.signal_rssi(b)
        return True

    def name_owner_changed(self, name, old, new):
        # A client that goes away loses its discovery and notify sessions, as in bluetoothd.
        if name.startswith(":") and old and not new:
            self.adapter.client_vanished(name)
            for b in self.bands.values():
                for _, chars in b.services:
                    for c in chars:
                        if c.obj is not None:
                            c.obj.client_vanished(name)


def main():
    global VERBOSE
    p = argparse.ArgumentParser(description="Emulated BlueZ for tests")
    p.add_argument("config", help="JSON file describing the adapter and bands")
    p.add_argument("--address", help="bus address (default: $DBUS_SYSTEM_BUS_ADDRESS)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin closes (the harness holds the write end)")
    p.add_argument("--kill-on-exit", type=int, metavar="PID",
                   help="SIGTERM this process (the private dbus-daemon) on exit")
    args = p.parse_args()
    VERBOSE = args.verbose or bool(os.environ.get("PHR_BLUEZ_VERBOSE"))

    address = args.address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if not address:
        sys.exit("no bus: pass --address or set DBUS_SYSTEM_BUS_ADDRESS")
    with open(args.config) as f:
        config = json.load(f)

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    loop = GLib.MainLoop()
    bus = dbus.bus.BusConnection(address)
    bus.set_exit_on_disconnect(False)
    emu = Emulator(bus, config, loop)

    def on_disconnect(*_):
        log("bus connection lost")
        loop.quit()
    bus.call_on_disconnection(on_disconnect)

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, lambda *_: (loop.quit(), False)[1])
    if args.exit_on_stdin_eof:
        def on_stdin(fd, cond):
            if cond & (GLib.IO_HUP | GLib.IO_ERR) or not os.read(fd, 4096):
                log("stdin closed")
                loop.quit()
                return False
            return True
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin)

    # Last: owning the name is the readiness signal.
    name = dbus.service.BusName(BLUEZ, bus, do_not_queue=True)
    log("ready on %s with %d band(s)" % (address, len(emu.bands)))
    try:
        loop.run()
    finally:
        del name
        if args.kill_on_exit:
            try:
                os.kill(args.kill_on_exit, signal.SIGTERM)
            except OSError:
                pass


if __name__ == "__main__":
    main()
