/**
 * The protobuf messages of the Secrets Store CSI driver's provider API (proto3, package
 * `v1alpha1`), encoded and decoded by hand, because seven small messages do not justify a code
 * generator. The encoder writes only the wire types these messages use (varint and
 * length-delimited). The decoder skips unknown fields of every wire type, as protobuf requires, so
 * a newer driver that adds fields still works.
 */
import { Reader, Writer } from "./_protobuf.ts";

export { ProtoError } from "./_protobuf.ts";

/** `VersionRequest`: field 1 is the API version the driver speaks, `"v1alpha1"`. */
export interface VersionRequest {
  version: string;
}

/** `VersionResponse`. */
export interface VersionResponse {
  version: string;
  runtimeName: string;
  runtimeVersion: string;
}

/** `ObjectVersion`: one object of a mount and the version of its content. */
export interface ObjectVersion {
  id: string;
  version: string;
}

/** `MountRequest`. `attributes` and `secrets` are JSON objects in strings; `permission` is a decimal file mode. */
export interface MountRequest {
  attributes: string;
  secrets: string;
  targetPath: string;
  permission: string;
  currentObjectVersion: ObjectVersion[];
}

/** `File`: a file the driver writes into the volume. */
export interface File {
  path: string;
  mode: number;
  contents: Uint8Array;
}

/** `MountResponse`. `error` is set only when the provider reports a failure by code instead of a gRPC status. */
export interface MountResponse {
  objectVersion: ObjectVersion[];
  error?: { code: string };
  files: File[];
}


/** Encodes a `VersionRequest`. */
export function encodeVersionRequest(message: VersionRequest): Uint8Array {
  return new Writer().string(1, message.version).finish();
}

/** Decodes a `VersionRequest`. @throws ProtoError */
export function decodeVersionRequest(bytes: Uint8Array): VersionRequest {
  const message: VersionRequest = { version: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.version = field.string();
  }
  return message;
}

/** Encodes a `VersionResponse`. */
export function encodeVersionResponse(message: VersionResponse): Uint8Array {
  return new Writer()
    .string(1, message.version)
    .string(2, message.runtimeName)
    .string(3, message.runtimeVersion)
    .finish();
}

/** Decodes a `VersionResponse`. @throws ProtoError */
export function decodeVersionResponse(bytes: Uint8Array): VersionResponse {
  const message: VersionResponse = { version: "", runtimeName: "", runtimeVersion: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.version = field.string();
    else if (field.number === 2) message.runtimeName = field.string();
    else if (field.number === 3) message.runtimeVersion = field.string();
  }
  return message;
}

/** Encodes a `MountRequest`. */
export function encodeMountRequest(message: MountRequest): Uint8Array {
  const writer = new Writer()
    .string(1, message.attributes)
    .string(2, message.secrets)
    .string(3, message.targetPath)
    .string(4, message.permission);
  for (const version of message.currentObjectVersion) writer.message(5, encodeObjectVersion(version));
  return writer.finish();
}

/** Decodes a `MountRequest`. @throws ProtoError */
export function decodeMountRequest(bytes: Uint8Array): MountRequest {
  const message: MountRequest = { attributes: "", secrets: "", targetPath: "", permission: "", currentObjectVersion: [] };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.attributes = field.string();
    else if (field.number === 2) message.secrets = field.string();
    else if (field.number === 3) message.targetPath = field.string();
    else if (field.number === 4) message.permission = field.string();
    else if (field.number === 5) message.currentObjectVersion.push(decodeObjectVersion(field.bytes()));
  }
  return message;
}

/** Encodes a `MountResponse`. */
export function encodeMountResponse(message: MountResponse): Uint8Array {
  const writer = new Writer();
  for (const version of message.objectVersion) writer.message(1, encodeObjectVersion(version));
  if (message.error) writer.message(2, new Writer().string(1, message.error.code).finish());
  for (const file of message.files) {
    writer.message(3, new Writer().string(1, file.path).int32(2, file.mode).bytes(3, file.contents).finish());
  }
  return writer.finish();
}

/** Decodes a `MountResponse`. @throws ProtoError */
export function decodeMountResponse(bytes: Uint8Array): MountResponse {
  const message: MountResponse = { objectVersion: [], files: [] };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.objectVersion.push(decodeObjectVersion(field.bytes()));
    else if (field.number === 2) message.error = decodeError(field.bytes());
    else if (field.number === 3) message.files.push(decodeFile(field.bytes()));
  }
  return message;
}

// ---------------------------------------------------------------------------------------------

function encodeObjectVersion(message: ObjectVersion): Uint8Array {
  return new Writer().string(1, message.id).string(2, message.version).finish();
}

function decodeObjectVersion(bytes: Uint8Array): ObjectVersion {
  const message: ObjectVersion = { id: "", version: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.id = field.string();
    else if (field.number === 2) message.version = field.string();
  }
  return message;
}

function decodeError(bytes: Uint8Array): { code: string } {
  const message = { code: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.code = field.string();
  }
  return message;
}

function decodeFile(bytes: Uint8Array): File {
  const message: File = { path: "", mode: 0, contents: new Uint8Array(0) };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.path = field.string();
    else if (field.number === 2) message.mode = field.int32();
    else if (field.number === 3) message.contents = field.bytes();
  }
  return message;
}
