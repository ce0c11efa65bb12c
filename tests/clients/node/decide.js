// Asks the Tailor gateway for decisions with a client generated from protos/ (grpc-js + proto-loader).
// Usage: TAILOR_GATEWAY_ADDR=host:port TAILOR_API_KEY=... node decide.js <point> <identity type> <identity value>
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const root = path.resolve(__dirname, "../../../protos");
const definition = loader.loadSync(path.join(root, "personalization/gateway/v1/gateway_service.proto"), {
  includeDirs: [root], keepCase: true, longs: String, enums: String, defaults: false, oneofs: true,
});
const gateway = grpc.loadPackageDefinition(definition).personalization.gateway.v1;
const client = new gateway.GatewayService(process.env.TAILOR_GATEWAY_ADDR, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.add("authorization", `Bearer ${process.env.TAILOR_API_KEY}`);
const [point, type, value] = process.argv.slice(2);
const request = {
  individual_id: { type, value },
  personalization_points: [{ name: point }],
  execution_flags: ["EXECUTION_FLAG_DIAGNOSTICS"],
};
client.GetDecisions(request, metadata, { deadline: Date.now() + 10000 }, (error, reply) => {
  if (error) {
    console.log(JSON.stringify({ code: error.code, details: error.details }));
    process.exit(2);
  }
  console.log(JSON.stringify(reply));
});
