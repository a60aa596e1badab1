"""The IEC 61968-9 edge over the IEC 61968-100 envelope: plain XML at /cim/messages, SOAP at
/cim/soap (WSDL at /cim/soap?wsdl). See docs/cim.md."""

from adapters.cim.http import install

__all__ = ["install"]
