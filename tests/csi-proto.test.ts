/** The hand-written protobuf codec of the provider API: round trips, wire bytes, unknown fields, bad input. */
import { describe, expect, test } from "bun:test";
import {
  decodeMountRequest,
  decodeMountResponse,
  decodeVersionRequest,
  decodeVersionResponse,
  encodeMountRequest,
  encodeMountResponse,
  encodeVersionRequest,
  encodeVersionResponse,
  ProtoError,
  type MountRequest,
  type MountResponse,
} from "../src/csi/proto.ts";

describe("csi proto", () => {
  test("VersionRequest round-trips", () => {
    expect(decodeVersionRequest(encodeVersionRequest({ version: "v1alpha1" }))).toEqual({ version: "v1alpha1" });
  });

  test("VersionRequest encodes as protoc does", () => {
    // Field 1, wire type 2 (tag 0x0a), length 8, "v1alpha1".
    expect(Buffer.from(encodeVersionRequest({ version: "v1alpha1" })).toString("hex")).toBe("0a08" + Buffer.from("v1alpha1").toString("hex"));
  });

  test("VersionResponse round-trips", () => {
    const message = { version: "v1alpha1", runtimeName: "scaivault-agent", runtimeVersion: "0.1.0" };
    expect(decodeVersionResponse(encodeVersionResponse(message))).toEqual(message);
  });

  test("MountRequest round-trips with object versions", () => {
    const message: MountRequest = {
      attributes: JSON.stringify({ base_url: "https://scaivault.scailabs.ai", objects: "- path: a\n  file: b\n" }),
      secrets: "{}",
      targetPath: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount",
      permission: "420",
      currentObjectVersion: [
        { id: "db.json", version: "3" },
        { id: "stripe.json", version: "7#secret_key" },
      ],
    };
    expect(decodeMountRequest(encodeMountRequest(message))).toEqual(message);
  });

  test("MountResponse round-trips binary contents, modes and error", () => {
    const binary = Uint8Array.from({ length: 300 }, (_, index) => (index * 31) % 256);
    const message: MountResponse = {
      objectVersion: [{ id: "tls.key", version: "12" }],
      files: [
        { path: "tls.key", mode: 0o400, contents: binary },
        { path: "certs/ca.crt", mode: 0o644, contents: new TextEncoder().encode("pässwörd-🔑") },
      ],
      error: { code: "ProviderError" },
    };
    expect(decodeMountResponse(encodeMountResponse(message))).toEqual(message);
  });

  test("MountResponse keeps an empty file and an empty object version entry", () => {
    const message: MountResponse = { objectVersion: [{ id: "", version: "" }], files: [{ path: "empty", mode: 0, contents: new Uint8Array(0) }] };
    const decoded = decodeMountResponse(encodeMountResponse(message));

    expect(decoded.objectVersion).toEqual([{ id: "", version: "" }]);
    expect(decoded.files).toEqual([{ path: "empty", mode: 0, contents: new Uint8Array(0) }]);
  });

  test("File mode encodes a negative int32 in ten bytes", () => {
    const encoded = encodeMountResponse({ objectVersion: [], files: [{ path: "a", mode: -1, contents: new Uint8Array([1]) }] });
    const decoded = decodeMountResponse(encoded);

    expect(decoded.files[0]!.mode).toBe(-1);
    // Embedded file: 0a 01 61 (path), tag 10 and a 10-byte varint (mode), 1a 01 01 (contents).
    expect(encoded[1]).toBe(3 + 11 + 3);
  });

  test("decoder skips unknown fields of every wire type", () => {
    const known = Buffer.from(encodeVersionRequest({ version: "v1alpha1" }));
    const unknown = Buffer.from([
      0x10, 0x96, 0x01, // field 2, varint 150
      0x19, 1, 2, 3, 4, 5, 6, 7, 8, // field 3, fixed64
      0x25, 1, 2, 3, 4, // field 4, fixed32
      0x2a, 0x02, 0xff, 0xfe, // field 5, 2 bytes
    ]);
    expect(decodeVersionRequest(Buffer.concat([unknown, known]))).toEqual({ version: "v1alpha1" });
  });

  test("later value of a scalar field wins, as in proto3", () => {
    const first = encodeVersionRequest({ version: "old" });
    const second = encodeVersionRequest({ version: "new" });
    expect(decodeVersionRequest(Buffer.concat([first, second])).version).toBe("new");
  });

  test.each([
    ["a truncated length", Buffer.from([0x0a, 0x05, 0x61])],
    ["a truncated varint", Buffer.from([0x10, 0x96])],
    ["field number 0", Buffer.from([0x02, 0x00])],
    ["a group wire type", Buffer.from([0x0b])],
    ["invalid UTF-8 in a string", Buffer.from([0x0a, 0x02, 0xc3, 0x28])],
    ["a string field sent as varint", Buffer.from([0x08, 0x01])],
  ])("decoder rejects %s", (_name, bytes) => {
    expect(() => decodeVersionRequest(bytes)).toThrow(ProtoError);
  });
});
