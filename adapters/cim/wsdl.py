"""The WSDL of ``/cim/soap``: SOAP 1.1, document/literal, one operation per verb and noun.

Built from the handlers served, following the 61968-100 WSDL template: per noun a wrapper
namespace ``http://iec.ch/TC57/2011/<Noun>Message`` with the request wrapper (``Get<Noun>``,
``Create<Noun>``, ``Created<Noun>``...), ``<Noun>ResponseMessage`` and ``<Noun>FaultMessage``, typed
with the 61968-100 message types; payloads are typed with the noun's profile, so a SOAP client
(zeep) builds and reads them as structures. soapAction is ``http://iec.ch/TC57/2011/<Noun>/<Op>``.
The schemas are imported from ``schemas/<name>.xsd`` relative to the WSDL's address.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from adapters.cim.envelope import MSG_NS

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
TNS = "http://iec.ch/TC57/2011/mdmhub"
GET_PROFILES = {"MeterReadings": "GetMeterReadings", "EndDeviceEvents": "GetEndDeviceEvents"}


def operation(verb: str, noun: str) -> str:
    return verb.capitalize() + noun


def _wrapper_schema(noun: str, verbs: list[str], schema_base: str) -> str:
    ns = f"http://iec.ch/TC57/2011/{noun}Message"
    get_profile = GET_PROFILES.get(noun)
    imports = [f'<xs:import namespace="{MSG_NS}" schemaLocation="{schema_base}Message.xsd"/>',
               f'<xs:import namespace="http://iec.ch/TC57/2011/{noun}#" schemaLocation="{schema_base}{noun}.xsd"/>']
    if get_profile:
        imports.append(f'<xs:import namespace="http://iec.ch/TC57/2011/{get_profile}#" '
                       f'schemaLocation="{schema_base}{get_profile}.xsd"/>')
    parts = [f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:msg="{MSG_NS}" xmlns:w="{ns}" '
             f'xmlns:p="http://iec.ch/TC57/2011/{noun}#"'
             + (f' xmlns:g="http://iec.ch/TC57/2011/{get_profile}#"' if get_profile else "")
             + f' targetNamespace="{ns}" elementFormDefault="qualified">', *imports]
    parts.append(f'''<xs:complexType name="{noun}PayloadType"><xs:sequence>
<xs:element ref="p:{noun}" minOccurs="0" maxOccurs="unbounded"/>
<xs:element name="Compressed" type="xs:string" minOccurs="0"/>
<xs:element name="Format" type="xs:string" minOccurs="0"/></xs:sequence></xs:complexType>''')
    if get_profile:
        parts.append(f'''<xs:complexType name="{get_profile}RequestType"><xs:sequence>
<xs:element name="StartTime" type="xs:dateTime" minOccurs="0"/>
<xs:element name="EndTime" type="xs:dateTime" minOccurs="0"/>
<xs:element name="Option" type="msg:OptionType" minOccurs="0" maxOccurs="unbounded"/>
<xs:element name="ID" type="msg:IDType" minOccurs="0" maxOccurs="unbounded"/>
<xs:element ref="g:{get_profile}"/></xs:sequence></xs:complexType>''')
    for verb in verbs:
        if verb == "get" and get_profile:
            body = (f'<xs:element name="Header" type="msg:HeaderType"/>'
                    f'<xs:element name="Request" type="w:{get_profile}RequestType"/>')
        else:
            body = (f'<xs:element name="Header" type="msg:HeaderType"/>'
                    f'<xs:element name="Request" type="msg:RequestType" minOccurs="0"/>'
                    f'<xs:element name="Payload" type="w:{noun}PayloadType" minOccurs="0"/>')
        parts.append(f'<xs:element name="{operation(verb, noun)}"><xs:complexType><xs:sequence>{body}'
                     '</xs:sequence></xs:complexType></xs:element>')
    parts.append(f'''<xs:element name="{noun}ResponseMessage"><xs:complexType><xs:sequence>
<xs:element name="Header" type="msg:HeaderType"/><xs:element name="Reply" type="msg:ReplyType"/>
<xs:element name="Payload" type="w:{noun}PayloadType" minOccurs="0"/></xs:sequence></xs:complexType></xs:element>
<xs:element name="{noun}FaultMessage"><xs:complexType><xs:sequence>
<xs:element name="Reply" type="msg:ReplyType"/></xs:sequence></xs:complexType></xs:element>''')
    parts.append("</xs:schema>")
    return "\n".join(parts)


def build_wsdl(served: dict[str, list[str]], address: str, schema_base: str = "schemas/") -> str:
    """The WSDL for ``served`` (noun -> verbs) at ``address``."""
    nouns = sorted(served)
    ns_decl = " ".join(f'xmlns:{n}="http://iec.ch/TC57/2011/{n}Message"' for n in nouns)
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<wsdl:definitions xmlns:wsdl="{WSDL_NS}" '
           f'xmlns:soap="{SOAP_NS}" xmlns:tns="{TNS}" {ns_decl} targetNamespace="{TNS}" name="mdmhub61968-9">',
           "<wsdl:types>"]
    out += [_wrapper_schema(n, sorted(served[n]), schema_base) for n in nouns]
    out.append("</wsdl:types>")
    for n in nouns:
        for verb in sorted(served[n]):
            op = operation(verb, n)
            out.append(f'<wsdl:message name="{op}RequestMessage"><wsdl:part name="{op}Request" element="{n}:{op}"/>'
                       '</wsdl:message>')
        out.append(f'<wsdl:message name="{n}ResponseMessage"><wsdl:part name="{n}Response" '
                   f'element="{n}:{n}ResponseMessage"/></wsdl:message>')
        out.append(f'<wsdl:message name="{n}FaultMessage"><wsdl:part name="{n}Fault" '
                   f'element="{n}:{n}FaultMessage"/></wsdl:message>')
    for n in nouns:
        out.append(f'<wsdl:portType name="{n}_Port">')
        for verb in sorted(served[n]):
            op = operation(verb, n)
            out.append(f'<wsdl:operation name="{op}"><wsdl:input message="tns:{op}RequestMessage"/>'
                       f'<wsdl:output message="tns:{n}ResponseMessage"/>'
                       f'<wsdl:fault name="{n}Fault" message="tns:{n}FaultMessage"/></wsdl:operation>')
        out.append("</wsdl:portType>")
        out.append(f'<wsdl:binding name="{n}_Binding" type="tns:{n}_Port">'
                   '<soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>')
        for verb in sorted(served[n]):
            op = operation(verb, n)
            out.append(f'<wsdl:operation name="{op}"><soap:operation soapAction="http://iec.ch/TC57/2011/{n}/{op}" '
                       'style="document"/><wsdl:input><soap:body use="literal"/></wsdl:input>'
                       '<wsdl:output><soap:body use="literal"/></wsdl:output>'
                       f'<wsdl:fault name="{n}Fault"><soap:fault name="{n}Fault" use="literal"/></wsdl:fault>'
                       '</wsdl:operation>')
        out.append("</wsdl:binding>")
    out.append('<wsdl:service name="MdmHub61968">')
    for n in nouns:
        out.append(f'<wsdl:port name="{n}_Port" binding="tns:{n}_Binding">'
                   f'<soap:address location={quoteattr(address)}/></wsdl:port>')
    out.append("</wsdl:service></wsdl:definitions>")
    return "\n".join(out)
