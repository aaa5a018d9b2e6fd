// The Node tus reference server (@tus/server + @tus/s3-store) that bench/gateway.py measures
// reelflow's gateway against: tus at /uploads/ on 127.0.0.1, staged into the given S3 bucket.
//
//   node server.mjs --endpoint http://127.0.0.1:PORT --bucket NAME --part-size BYTES
//                   [--port 0] [--checksum sha256|none]
//
// Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
// (moto accepts any). Prints one line "tus-node listening on http://127.0.0.1:N/uploads/" once
// it accepts connections; the bench waits for it.
import { parseArgs } from "node:util";
import { S3Store } from "@tus/s3-store";
import { Server } from "@tus/server";

const { values: args } = parseArgs({
  options: {
    endpoint: { type: "string" },
    bucket: { type: "string" },
    "part-size": { type: "string" },
    port: { type: "string", default: "0" },
    checksum: { type: "string", default: "sha256" },
  },
});
if (!args.endpoint || !args.bucket || !args["part-size"]) {
  console.error("usage: server.mjs --endpoint URL --bucket NAME --part-size BYTES [--port N]");
  process.exit(2);
}
const partSize = Number(args["part-size"]);

const store = new S3Store({
  // partSize = minPartSize: every part but the last is exactly reelflow's part size.
  partSize,
  minPartSize: partSize,
  s3ClientConfig: {
    endpoint: args.endpoint,
    forcePathStyle: true, // moto on 127.0.0.1 has no virtual-host buckets
    bucket: args.bucket,
    region: process.env.AWS_DEFAULT_REGION ?? "us-east-1",
    credentials: {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? "testing",
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? "testing",
    },
  },
});

if (args.checksum === "sha256") {
  // Parity with reelflow (and the boto3 baseline): a SHA-256 checksum on every part, which
  // S3 verifies. Without this the SDK sends its default CRC32, a cheaper hash.
  store.client.middlewareStack.add(
    (next, context) => async (call) => {
      if (context.commandName === "UploadPartCommand") {
        call.input.ChecksumAlgorithm = "SHA256";
      }
      return next(call);
    },
    { step: "initialize", name: "benchSha256Parts" },
  );
}

const server = new Server({ path: "/uploads", datastore: store });
const http = server.listen({ host: "127.0.0.1", port: Number(args.port) }, () => {
  const { port } = http.address();
  console.log(`tus-node listening on http://127.0.0.1:${port}/uploads/`);
});

// Exit at once: a keep-alive client connection would hold http.close() open.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
