#!/usr/bin/env node
// Compiles NaiveMarket.sol with the solc of scripts/node_modules and the same
// settings as scripts/build_contract.js (cancun, optimizer 10000 runs, via IR),
// and prints {"compiler", "abi", "bytecode"} as JSON on stdout.
//
//   node benchmarks/contracts/build_naive.js > naive.json
'use strict';

const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..');

let solc;
try {
  solc = require(path.join(ROOT, 'scripts', 'node_modules', 'solc'));
} catch (err) {
  console.error('solc is not installed: npm install --prefix scripts (' + (err.code || err.message) + ')');
  process.exit(2);
}

const input = {
  language: 'Solidity',
  sources: { 'NaiveMarket.sol': { content: fs.readFileSync(path.join(__dirname, 'NaiveMarket.sol'), 'utf8') } },
  settings: {
    evmVersion: 'cancun',
    optimizer: { enabled: true, runs: 10000 },
    viaIR: true,
    outputSelection: { '*': { NaiveMarket: ['abi', 'evm.bytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((d) => d.severity === 'error');
for (const diag of output.errors || []) console.error(diag.formattedMessage || diag.message);
if (errors.length) process.exit(1);
const compiled = output.contracts['NaiveMarket.sol'].NaiveMarket;
process.stdout.write(
  JSON.stringify({ compiler: solc.version(), abi: compiled.abi, bytecode: '0x' + compiled.evm.bytecode.object }) + '\n',
);
