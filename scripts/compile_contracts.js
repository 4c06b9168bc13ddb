#!/usr/bin/env node
// Compiles contracts/src and contracts/test with the pinned npm `solc` (solcjs, standard-JSON API) and
// writes one artifact per contract to contracts/out/<Name>.json ({abi, bytecode, deployedBytecode, ...}).
//
// Use it through `node scripts/compile_contracts.js [--force]`, or let scripts/chain.py call it. The
// build is skipped when the sources, settings and compiler version hash to the value recorded in
// contracts/out/.build-hash, so repeated test sessions do not pay for solcjs again.
//
// `infernet-sdk/` is remapped to contracts/src/sdk/ (our ABI-identical stand-in). To build the consumers
// against the real SDK instead, point INFERNET_SDK_DIR at a checkout of ritual-net/infernet-sdk
// v1.1.0's src/ and add its own dependency through SOLC_REMAPPINGS, e.g.
//   INFERNET_SDK_DIR=lib/infernet-sdk/src SOLC_REMAPPINGS=solady/=lib/infernet-sdk/lib/solady/src/
// Bytecode is generated for our own sources only: the SDK's Base.sol imports its whole Coordinator,
// which does not fit the stack without the IR pipeline. Against the real SDK the build also uses that
// pipeline (viaIR), as the SDK's own foundry.toml does; SOLC_VIA_IR=1|0 overrides the choice.
// CONTRACTS_OUT writes the artifacts somewhere other than contracts/out.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const OUT = process.env.CONTRACTS_OUT
  ? path.resolve(process.env.CONTRACTS_OUT)
  : path.join(ROOT, 'contracts', 'out');
const SOURCE_DIRS = ['contracts/src', 'contracts/test'];
const EVM_VERSION = 'cancun';

function listSol(dir) {
  const abs = path.join(ROOT, dir);
  if (!fs.existsSync(abs)) return [];
  const found = [];
  for (const entry of fs.readdirSync(abs, { withFileTypes: true })) {
    const rel = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) found.push(...listSol(rel));
    else if (entry.name.endsWith('.sol')) found.push(rel);
  }
  return found.sort();
}

function main() {
  const force = process.argv.includes('--force');
  let solc;
  try {
    solc = require('solc');
  } catch (err) {
    console.error('error: the npm package solc is not installed; run `npm ci` in ' + ROOT);
    process.exit(2);
  }
  const sdkDir = process.env.INFERNET_SDK_DIR
    ? path.resolve(process.env.INFERNET_SDK_DIR)
    : path.join(ROOT, 'contracts', 'src', 'sdk');
  const sdkPrefix = path.relative(ROOT, sdkDir).split(path.sep).join('/') + '/';
  const files = [];
  for (const dir of SOURCE_DIRS) {
    for (const rel of listSol(dir)) {
      // With a real SDK checkout our stand-in must not be compiled beside it (duplicate names).
      if (process.env.INFERNET_SDK_DIR && rel.startsWith('contracts/src/sdk/')) continue;
      files.push(rel);
    }
  }
  if (files.length === 0) {
    console.error('error: no .sol files under ' + SOURCE_DIRS.join(', '));
    process.exit(2);
  }

  const extra = (process.env.SOLC_REMAPPINGS || '').split(',').map((r) => r.trim()).filter(Boolean);
  const allowedDirs = [ROOT, sdkDir];
  for (const r of extra) {
    const target = r.split('=')[1];
    if (!target) {
      console.error('error: SOLC_REMAPPINGS entries look like prefix/=path/, got ' + r);
      process.exit(2);
    }
    allowedDirs.push(path.resolve(ROOT, target));
  }
  const viaEnv = process.env.SOLC_VIA_IR;
  if (viaEnv !== undefined && viaEnv !== '' && viaEnv !== '0' && viaEnv !== '1') {
    console.error('error: SOLC_VIA_IR must be 1 or 0, got ' + viaEnv);
    process.exit(2);
  }
  const viaIR = viaEnv === '1' || ((viaEnv === undefined || viaEnv === '') && Boolean(process.env.INFERNET_SDK_DIR));
  const outputSelection = {};
  for (const rel of files) {
    // Only our sources: an imported library's contracts (the SDK's Coordinator) get no bytecode.
    outputSelection[rel] = {
      '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'evm.methodIdentifiers'],
    };
  }
  const settings = {
    remappings: ['infernet-sdk/=' + sdkPrefix, ...extra],
    optimizer: { enabled: true, runs: 200 },
    evmVersion: EVM_VERSION,
    viaIR,
    outputSelection,
  };
  const sources = {};
  const hash = crypto.createHash('sha256');
  hash.update(solc.version() + '\n' + JSON.stringify(settings) + '\n');
  for (const rel of files) {
    const content = fs.readFileSync(path.join(ROOT, rel), 'utf8');
    sources[rel] = { content };
    hash.update(rel + '\n' + content + '\n');
  }
  const digest = hash.digest('hex');
  const hashFile = path.join(OUT, '.build-hash');
  if (!force && fs.existsSync(hashFile) && fs.readFileSync(hashFile, 'utf8').trim() === digest) {
    console.log('contracts up to date (' + files.length + ' sources, solc ' + solc.version() + ')');
    return;
  }

  function findImports(importPath) {
    // Paths arrive already remapped and relative to ROOT; refuse anything outside the repository
    // and the remapping targets.
    const abs = path.resolve(ROOT, importPath);
    if (!allowedDirs.some((dir) => abs.startsWith(dir + path.sep))) {
      return { error: 'import outside the repository: ' + importPath };
    }
    if (!fs.existsSync(abs)) return { error: 'file not found: ' + importPath };
    return { contents: fs.readFileSync(abs, 'utf8') };
  }

  const started = Date.now();
  const input = { language: 'Solidity', sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  let failed = false;
  for (const diag of output.errors || []) {
    const text = diag.formattedMessage || diag.message;
    if (diag.severity === 'error') {
      failed = true;
      console.error(text);
    } else {
      console.warn(text);
    }
  }
  if (failed) {
    console.error('error: compilation failed');
    process.exit(1);
  }

  fs.mkdirSync(OUT, { recursive: true });
  for (const old of fs.readdirSync(OUT)) {
    if (old.endsWith('.json')) fs.unlinkSync(path.join(OUT, old));
  }
  let count = 0;
  for (const [sourceName, contracts] of Object.entries(output.contracts || {})) {
    if (!(sourceName in outputSelection)) continue;
    for (const [name, c] of Object.entries(contracts)) {
      const artifact = {
        contractName: name,
        sourceName,
        compiler: 'solc ' + solc.version(),
        evmVersion: EVM_VERSION,
        viaIR,
        abi: c.abi,
        bytecode: '0x' + c.evm.bytecode.object,
        deployedBytecode: '0x' + c.evm.deployedBytecode.object,
        methodIdentifiers: c.evm.methodIdentifiers,
      };
      fs.writeFileSync(path.join(OUT, name + '.json'), JSON.stringify(artifact, null, 1) + '\n');
      count += 1;
    }
  }
  fs.writeFileSync(hashFile, digest + '\n');
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log('compiled ' + count + ' contracts from ' + files.length + ' sources in ' + secs + ' s -> ' +
    path.relative(ROOT, OUT) + '/ (solc ' + solc.version() + ', evmVersion ' + EVM_VERSION +
    (viaIR ? ', viaIR' : '') + ')');
}

main();
