#!/usr/bin/env node
// Compiles TaskMarket.sol (and the Solidity helpers the tests deploy) with the
// solc version pinned in scripts/package.json and writes the JSON artifacts
// that are committed next to the sources.
//
//   node scripts/build_contract.js          rebuild the artifacts
//   node scripts/build_contract.js --check  exit 1 if an artifact is stale
//
// Output is byte-for-byte reproducible (fixed settings, fixed key order,
// trailing newline) so a rebuild with unchanged sources leaves git clean.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const PINNED = require('./package.json').dependencies.solc;

// Pinned so the bytecode does not change with the solc default target; py-evm
// (the embedded chain) and every live network in use run cancun or later.
const EVM_VERSION = 'cancun';
const OPTIMIZER = { enabled: true, runs: 10000 };
// The IR pipeline packs the per-task struct into single SSTOREs and copes with
// the wide event signatures without stack-depth errors.
const VIA_IR = true;

const TARGETS = [
  {
    sources: ['decloud_magics/chain/contracts/TaskMarket.sol'],
    artifact: 'decloud_magics/chain/contracts/TaskMarket.json',
    single: 'TaskMarket',
  },
  {
    sources: ['tests/contracts/MarketActor.sol'],
    artifact: 'tests/contracts/Helpers.json',
  },
];

function loadSolc() {
  let solc;
  try {
    solc = require(path.join(__dirname, 'node_modules', 'solc'));
  } catch (err) {
    console.error(
      'The Solidity compiler is not installed for the build script.\n' +
        'Install the pinned version with:  npm install --prefix scripts\n' +
        `(${err.code || err.message})`,
    );
    process.exit(2);
  }
  const version = solc.version();
  if (!version.startsWith(PINNED + '+')) {
    console.error(
      `scripts/node_modules holds solc ${version}, but ${PINNED} is pinned.\n` +
        'Reinstall with:  npm install --prefix scripts',
    );
    process.exit(2);
  }
  return solc;
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

function compile(solc, target) {
  const sources = {};
  const hashes = {};
  for (const rel of target.sources) {
    const bytes = fs.readFileSync(path.join(ROOT, rel));
    // The bare file name is the source unit name, so the embedded metadata
    // hash does not depend on where the checkout lives.
    sources[path.basename(rel)] = { content: bytes.toString('utf8') };
    hashes[path.basename(rel)] = sha256(bytes);
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      viaIR: VIA_IR,
      outputSelection: {
        '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
      },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  let failed = false;
  for (const diag of output.errors || []) {
    const text = diag.formattedMessage || diag.message;
    if (diag.severity === 'error') failed = true;
    console.error(text);
  }
  if (failed) {
    console.error(`Compilation failed for ${target.sources.join(', ')}`);
    process.exit(1);
  }
  return { output, hashes };
}

function contractEntry(compiled) {
  return {
    abi: compiled.abi,
    bytecode: '0x' + compiled.evm.bytecode.object,
    deployedBytecode: '0x' + compiled.evm.deployedBytecode.object,
  };
}

function compilerInfo(solc) {
  return {
    version: solc.version(),
    evmVersion: EVM_VERSION,
    optimizer: { enabled: OPTIMIZER.enabled, runs: OPTIMIZER.runs },
    viaIR: VIA_IR,
  };
}

function render(solc, target) {
  const { output, hashes } = compile(solc, target);
  let doc;
  if (target.single) {
    const unit = path.basename(target.sources[0]);
    const compiled = output.contracts[unit][target.single];
    const entry = contractEntry(compiled);
    doc = {
      contractName: target.single,
      compiler: compilerInfo(solc),
      sourceSha256: hashes[unit],
      abi: entry.abi,
      bytecode: entry.bytecode,
      deployedBytecode: entry.deployedBytecode,
    };
  } else {
    const contracts = {};
    for (const unit of Object.keys(output.contracts).sort()) {
      for (const name of Object.keys(output.contracts[unit]).sort()) {
        contracts[name] = contractEntry(output.contracts[unit][name]);
      }
    }
    doc = {
      compiler: compilerInfo(solc),
      sourceSha256: Object.fromEntries(Object.keys(hashes).sort().map((k) => [k, hashes[k]])),
      contracts,
    };
  }
  return JSON.stringify(doc, null, 2) + '\n';
}

function main() {
  const check = process.argv.includes('--check');
  const solc = loadSolc();
  let stale = 0;
  for (const target of TARGETS) {
    const text = render(solc, target);
    const file = path.join(ROOT, target.artifact);
    if (check) {
      const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : null;
      if (current !== text) {
        console.error(`stale: ${target.artifact} (run: node scripts/build_contract.js)`);
        stale += 1;
      } else {
        console.log(`up to date: ${target.artifact}`);
      }
    } else {
      fs.writeFileSync(file, text);
      console.log(`wrote ${target.artifact}`);
    }
  }
  if (stale) process.exit(1);
}

main();
