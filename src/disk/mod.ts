// mod.ts - disk images (crosvm's disk crate): raw files and qcow2, behind one DiskImage interface.
export { DiskFile, type DiskImage, writeZeroBytes } from "./disk_file.ts";
export { type BackingOpener, createQcow2, imageOf, isQcow2, MAX_BACKING_DEPTH, openDiskImage, Qcow2Error, Qcow2Image } from "./qcow2.ts";
